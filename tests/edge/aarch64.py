"""The runtime on emulated aarch64 (Cortex-A76) against x86: the aarch64 job of `.ci/run`.
docs/edge.md says what it proves and what only a real board can.

    python tests/edge/aarch64.py [--workdir DIR] [--cpu cortex-a72]

1. The emulator: qemu-user-static and mmdebstrap (apt-get installs them when missing), and a
   Debian bookworm arm64 Python unpacked into DIR/root with an ARM /proc/cpuinfo.
2. The runtime-only wheel of this checkout, installed for aarch64 with PyPI's aarch64 wheels of
   numpy, onnxruntime and tokenizers (no torch, no onnx) into DIR/root/opt/site, at the versions
   x86 runs, so that the two sides differ only in architecture.
3. Step graphs made on x86: the tiny preset and the shipped pass-key model, fp32 and int8. The
   int8 graphs have 7-bit weights (`--target avx2`): their integer products are then exact on
   every x86 as on ARM, so both machines compute the same integer matmuls. (With 8-bit weights
   an x86 without VNNI saturates u8 x s8 pairs and is the one that is wrong; docs/edge.md.)
4. x86 against emulated aarch64, for each graph: every token's logits over a pass-key haystack
   and the greedy tokens after it (tests/edge/probe.py); `infini stream FILE --generate` output,
   byte for byte; each side's saved state resumed on the other, byte for byte. Then a
   20,000-token `infini demo passkey` emulated on the model the wheel carries, which must answer
   right.

Exit status: 0 within bounds, 1 a mismatch, 2 the job could not be set up (the emulator, the
packages, the exports; or a --workdir that is not empty).
Needs the [export] extra on x86 (it exports the graphs) and the network to PyPI and Debian.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from runtime_wheel import build_wheel

# The emulated cores, with what their /proc/cpuinfo says (features; variant and part number).
# QEMU's default CPU, `max`, reports SME, and int8 then goes wrong under QEMU 7.2 (docs/edge.md).
CPUS = {
    "cortex-a76": (  # Raspberry Pi 5; close to Jetson Orin's Cortex-A78AE
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp",
        "0x4",
        "0xd0b",
    ),
    "cortex-a72": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "0x0", "0xd08"),  # Pi 4
}
CPU = "cortex-a76"
AARCH64_WHEELS = ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
FP32_MAX_ABS_DIFF = 1e-4  # logits, fp32 graphs: the kernels differ only in summation order
INT8_ARGMAX_AGREEMENT = 0.98  # int8 graphs: ARM's int8 kernels round differently
HAYSTACK_TOKENS = 1_000
GENERATE_TOKENS = 24
DEMO_TOKENS = 20_000
PROBE = Path(__file__).with_name("probe.py")
SETUP_TIMEOUT = 900  # s, each set-up step (apt-get, mmdebstrap, pip)
CALL_TIMEOUT = 600  # s, each command on either machine (the emulated demo takes about 120 s)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
APT_ENV_ARGS = [f"{k}={v}" for k, v in APT_ENV.items()]  # through sudo, which drops the rest
# An ARM /proc/cpuinfo for onnxruntime: QEMU passes the host's x86 one through, on which
# onnxruntime's CPU detection crashes. One entry per core.
CPUINFO_ENTRY = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: {features}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: {variant}
CPU part\t: {part}
CPU revision\t: 1

"""


class SetupError(Exception):
    """The emulator or the aarch64 packages could not be set up (exit status 2)."""


class Job:
    """Runs commands on x86 (this Python) and emulated aarch64, logging each step's time."""

    def __init__(self, workdir: Path, cpu: str = CPU):
        self.workdir = workdir
        self.cpu = cpu
        self.root = workdir / "root"  # the Debian arm64 tree
        self.site = self.root / "opt" / "site"  # the wheel and its dependencies, for aarch64
        self.start = time.perf_counter()
        # The guest gets this environment; the host's virtualenv must not leak into it.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
        self.env["PYTHONNOUSERSITE"] = "1"  # nor packages in the host's ~/.local

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", flush=True)

    def python(self, machine: str, *args: str) -> subprocess.CompletedProcess:
        """`python ARGS` on x86_64 or emulated aarch64, in the work directory."""
        if machine not in ("x86_64", "aarch64"):
            raise ValueError(f"unknown machine {machine!r}")
        if machine == "x86_64":
            command = [sys.executable, *args]
        else:
            command = ["qemu-aarch64-static", "-cpu", self.cpu, "-L", str(self.root),
                       "-E", f"PYTHONPATH={self.site}", str(self.root / "usr/bin/python3.11"),
                       *args]  # fmt: skip
        return subprocess.run(
            command, cwd=self.workdir, env=self.env, capture_output=True, timeout=CALL_TIMEOUT
        )

    def infini(self, machine: str, *args: str) -> subprocess.CompletedProcess:
        """The infini CLI through its module (`pip --target` writes no usable scripts)."""
        result = self.python(machine, "-m", "infini_onnx", *args)
        if result.returncode != 0:
            raise AssertionError(
                f"{machine}: infini {' '.join(args)} failed:\n{result.stderr.decode()[-2000:]}"
            )
        return result


def run_setup(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SETUP_TIMEOUT,
                                stdin=subprocess.DEVNULL, env=os.environ | APT_ENV)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SetupError(
            f"{what}: no end after {SETUP_TIMEOUT} s ({' '.join(command[:3])} ...)"
        ) from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise SetupError(f"{what} failed ({' '.join(command[:3])} ...):\n{tail}")


def install_emulator() -> None:
    """qemu-aarch64-static and mmdebstrap, from the distribution's packages when missing."""
    missing = [t for t in ("qemu-aarch64-static", "mmdebstrap") if shutil.which(t) is None]
    if not missing:
        return
    # apt-get as root, or through sudo when it asks no password
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n", "env", *APT_ENV_ARGS]
    sudo_works = not as_root or (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    )
    if shutil.which("apt-get") is None or not sudo_works:
        raise SetupError(
            f"{' and '.join(missing)} not found, and apt-get cannot install them here (it needs "
            "Debian or Ubuntu, and root or sudo without a password): install the packages "
            "qemu-user-static and mmdebstrap"
        )
    install = [*as_root, "apt-get", "install", "-y", "-q", "qemu-user-static", "mmdebstrap"]
    try:
        run_setup(install, "installing qemu-user-static and mmdebstrap")
    except SetupError:  # stale package lists?
        run_setup([*as_root, "apt-get", "update", "-q"], "updating the package lists")
        run_setup(install, "installing qemu-user-static and mmdebstrap")


def host_versions() -> list[str]:
    """The runtime's dependencies pinned to the versions this x86 side runs, so that the two
    machines differ only in architecture."""
    import onnxruntime
    import tokenizers

    return [f"{m.__name__}=={m.__version__}" for m in (onnxruntime, np, tokenizers)]


def set_up_aarch64(job: Job) -> None:
    """The Debian arm64 Python and the wheel installed for it (the emulator is installed)."""
    run_setup(
        ["mmdebstrap", "--arch=arm64", "--variant=extract", "--include=python3.11,libstdc++6",
         "bookworm", str(job.root)],
        "unpacking Debian's arm64 Python",
    )  # fmt: skip
    from infini_onnx.runtime.device import default_threads  # the cores this process may use

    (job.root / "proc").mkdir(exist_ok=True)  # the extract variant makes no /proc
    features, variant, part = CPUS[job.cpu]
    cpuinfo = "".join(
        CPUINFO_ENTRY.format(n=n, features=features, variant=variant, part=part)
        for n in range(default_threads())
    )
    (job.root / "proc" / "cpuinfo").write_text(cpuinfo)
    job.log(f"aarch64 Python unpacked in {job.root}")

    try:
        wheel = build_wheel(job.workdir / "wheel")
    except (RuntimeError, subprocess.CalledProcessError) as e:
        raise SetupError(str(e)) from e
    platforms = [arg for tag in AARCH64_WHEELS for arg in ("--platform", tag)]
    run_setup(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(job.site), *platforms,
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
         "--only-binary=:all:", str(wheel), *host_versions()],
        "installing the wheel's aarch64 dependencies from PyPI",
    )  # fmt: skip
    job.log(f"{wheel.name} installed for aarch64 with its dependencies")


def export_graphs(name: str, workdir: Path) -> list[Path]:
    """fp32 and int8 graphs of the tiny preset or the shipped pass-key model, made on x86."""
    from infini_onnx.demo import SHIPPED_MODEL
    from infini_onnx.export.exporter import export_model
    from infini_onnx.model import init_model_dir
    from infini_onnx.quantize.quantizer import quantize_model
    from infini_onnx.quantize.targets import resolve

    model_dir = SHIPPED_MODEL if name == "passkey" else workdir / name
    if name == "tiny":
        init_model_dir(model_dir, "tiny", seed=0)
    fp32, int8 = workdir / f"{name}-fp32.onnx", workdir / f"{name}-int8.onnx"
    export_model(model_dir, fp32)
    quantize_model(fp32, int8, resolve("int8", target="avx2"))
    return [fp32, int8]


def haystack(job: Job) -> Path:
    from infini_onnx import passkey

    path = job.workdir / "haystack.txt"
    path.write_text("".join(passkey.haystack(HAYSTACK_TOKENS, 0.5, "31415")))
    return path


def compare_logits(graph: str, x86: dict, arm: dict) -> tuple[dict, list[str]]:
    """Figures for one graph and the bounds it breaks."""
    logits_x86, logits_arm = x86[f"{graph}/logits"], arm[f"{graph}/logits"]  # [S, V] each
    diff = float(np.abs(logits_x86 - logits_arm).max())
    argmax = float((logits_x86.argmax(-1) == logits_arm.argmax(-1)).mean())
    same_greedy = bool(np.array_equal(x86[f"{graph}/greedy"], arm[f"{graph}/greedy"]))
    figures = dict(
        max_abs_diff=diff,
        relative_diff=diff / float(np.abs(logits_x86).max()),
        argmax_agreement=argmax,
        greedy_identical=same_greedy,
    )
    broken = []
    if graph.endswith("fp32") and not diff <= FP32_MAX_ABS_DIFF:
        broken.append(f"{graph}: max |logit diff| {diff:.2e} > {FP32_MAX_ABS_DIFF:.0e}")
    if graph.endswith("int8") and not argmax >= INT8_ARGMAX_AGREEMENT:
        broken.append(f"{graph}: argmax agreement {argmax:.1%} < {INT8_ARGMAX_AGREEMENT:.0%}")
    if not same_greedy:
        broken.append(f"{graph}: greedy tokens differ: x86 {x86[f'{graph}/greedy'].tolist()}, "
                      f"aarch64 {arm[f'{graph}/greedy'].tolist()}")  # fmt: skip
    return figures, broken


def compare_streams(job: Job, graph: Path, text: Path) -> tuple[dict, list[str]]:
    """`infini stream` on both machines, byte for byte; then the state each side saved, resumed
    on the other machine, against x86 resuming its own."""
    greedy = ["--generate", str(GENERATE_TOKENS), "--temperature", "0", "--no-progress"]
    out, state = {}, {}
    for machine in ("x86_64", "aarch64"):
        state[machine] = str(job.workdir / f"{graph.stem}.{machine}.state")
        out[machine] = job.infini(machine, "stream", str(graph), str(text), *greedy,
                                  "--save-state", state[machine]).stdout  # fmt: skip
    resumed = {  # (saved on, resumed on) -> output
        (saved, on): job.infini(on, "stream", str(graph), "--resume", state[saved], *greedy).stdout
        for saved, on in (("x86_64", "x86_64"), ("aarch64", "x86_64"), ("x86_64", "aarch64"))
    }
    figures = dict(stream_output=out["x86_64"].decode(errors="replace").strip())
    figures["stream_identical"] = out["x86_64"] == out["aarch64"]
    figures["resume_identical"] = len(set(resumed.values())) == 1
    broken = []
    if not figures["stream_identical"]:
        broken.append(f"{graph.stem}: `infini stream` output differs: x86 {out['x86_64']!r}, "
                      f"aarch64 {out['aarch64']!r}")  # fmt: skip
    if not figures["resume_identical"]:
        broken.append(f"{graph.stem}: resumed states generate differently "
                      f"(saved on, resumed on): {resumed}")  # fmt: skip
    return figures, broken


def run_demo(job: Job) -> tuple[dict, list[str]]:
    """`infini demo passkey` on the packaged graph: emulated with no MODEL (a runtime-only
    install), which must answer right; and on x86 given the same file, for the report. (The
    packaged graph has 8-bit weights, so an x86 without VNNI may be the one that is off.)"""
    from infini_onnx.demo import PACKAGED_MODEL

    length = ["--length", str(DEMO_TOKENS)]
    arm = job.infini("aarch64", "demo", "passkey", *length).stdout.decode()
    x86 = job.infini("x86_64", "demo", "passkey", str(PACKAGED_MODEL), *length).stdout.decode()
    lines = {m: [l for l in out.splitlines() if l.startswith(("pass key", "answer"))]
             for m, out in (("x86_64", x86), ("aarch64", arm))}  # fmt: skip
    speed = next((l for l in arm.splitlines() if l.startswith("time")), "time ?")
    figures = dict(aarch64=lines["aarch64"], x86_64=lines["x86_64"], aarch64_time=speed)
    broken = []
    if "first use" in arm or not any(l.endswith(": correct") for l in lines["aarch64"]):
        broken.append(f"demo on aarch64 did not answer right from the packaged model:\n{arm}")
    return figures, broken


def run_job(job: Job, graphs: list[Path]) -> list[str]:
    """Everything after set-up; returns the broken bounds (none: all within bounds)."""
    text = haystack(job)
    probes = {}
    for machine in ("x86_64", "aarch64"):
        out = job.workdir / f"probe-{machine}.npz"
        result = job.python(machine, str(PROBE), str(out), str(text), *map(str, graphs))
        if result.returncode != 0:
            return [f"{machine}: the probe failed:\n{result.stderr.decode()[-3000:]}"]
        probes[machine] = dict(np.load(out))
        job.log(f"probed on {machine}")
    machines = {m: json.loads(str(probes[m]["machine"])) for m in probes}
    report, broken = {"machines": machines, "cpu": job.cpu}, []
    if machines["aarch64"]["torch_importable"] or machines["aarch64"]["onnx_importable"]:
        broken.append(f"the aarch64 runtime-only install has torch or onnx: {machines['aarch64']}")
    for graph in graphs:
        figures, wrong = compare_logits(graph.stem, probes["x86_64"], probes["aarch64"])
        more, wrong_too = compare_streams(job, graph, text)
        report[graph.stem] = figures | more
        broken += wrong + wrong_too
        job.log(f"compared {graph.stem}" + (": DIFFERS" if wrong or wrong_too else ""))
    report["demo"], wrong = run_demo(job)
    broken += wrong
    job.log("compared the demo")
    (job.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return broken


def print_table(report: dict) -> None:
    print(f"\naarch64 ({report['cpu']}, emulated) against x86_64, onnxruntime "
          f"{report['machines']['aarch64']['onnxruntime']}:")  # fmt: skip
    print("| graph | max abs diff | relative | argmax agree | greedy | stream | resume |")
    print("|---|---|---|---|---|---|---|")
    same = {True: "same", False: "DIFFERS"}
    for graph, f in report.items():
        if graph in ("machines", "cpu", "demo"):
            continue
        print(f"| {graph} | {f['max_abs_diff']:.1e} | {f['relative_diff']:.1e} | "
              f"{f['argmax_agreement']:.1%} | {same[f['greedy_identical']]} | "
              f"{same[f['stream_identical']]} | {same[f['resume_identical']]} |")  # fmt: skip
    demo = report["demo"]
    print(f"demo on aarch64: {'; '.join(demo['aarch64'])}; {demo['aarch64_time']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary "
                        "directory, removed when all is within bounds)")  # fmt: skip
    parser.add_argument("--cpu", choices=CPUS, default=CPU, help="the emulated core "
                        "(cortex-a72 is a Raspberry Pi 4)")  # fmt: skip
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="infini-aarch64-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        print(f"aarch64 job: {workdir} is not empty; give a new or empty one", file=sys.stderr)
        return 2
    job = Job(workdir, args.cpu)
    try:
        install_emulator()
        with ProcessPoolExecutor(2) as pool:  # the exports (tracing, CPU) beside the downloads
            exports = [pool.submit(export_graphs, name, workdir) for name in ("tiny", "passkey")]
            set_up_aarch64(job)
            try:
                graphs = [graph for export in exports for graph in export.result()]
            except Exception as e:  # e.g. no [export] extra
                raise SetupError(f"exporting the graphs on x86 failed: {e!r}") from e
    except SetupError as e:
        print(f"aarch64 job: cannot set up: {e}", file=sys.stderr)
        if args.workdir is None:
            shutil.rmtree(workdir)
        return 2
    job.log("exported and quantised: " + ", ".join(g.name for g in graphs))
    try:
        broken = run_job(job, graphs)
    except AssertionError as e:  # a command that failed
        broken = [str(e)]
    except subprocess.TimeoutExpired as e:
        broken = [f"no end after {e.timeout} s: {' '.join(map(str, e.cmd))}"]
    job.log("aarch64 job done")
    if broken:
        print("\naarch64 job FAILED:\n" + "\n".join(f"- {b}" for b in broken), file=sys.stderr)
        print(f"(kept {workdir} for a look)", file=sys.stderr)
        return 1
    print(f"aarch64 job passed in {time.perf_counter() - job.start:.0f} s")
    if args.workdir is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
