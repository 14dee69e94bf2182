"""`infini bench` as a script, writing to benchmarks/results/ by default (see README.md here).

python benchmarks/bench.py [--quick] [--out DIR] [--threads N] [--workdir DIR] [--note TEXT]
"""

from pathlib import Path

from infini_onnx.cli.bench_cmd import bench_command

if __name__ == "__main__":
    bench_command(default_map={"out": str(Path(__file__).parent / "results")})
