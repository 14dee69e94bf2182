"""Put back, one at a time, the bugs that once survived the suite (issue 15), and check that
each now fails at least one test.

Each bug is a one-line edit of the source. The edit is made in a temporary copy of the
repository (never in your checkout), and the tests that guard it run there.

    python tests/mutation/known_bugs.py            # all bugs
    python tests/mutation/known_bugs.py sampler    # those whose name contains "sampler"

Exit status 1 if any bug survives. See docs/testing.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bug:
    name: str
    file: str
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that should catch it


BUGS = [
    Bug(
        "finite-check-logits-only",
        "infini_onnx/runtime/device.py",
        "return all(np.isfinite(a).all() for a in arrays)",
        "return bool(np.isfinite(out.logits).all())",
        ("tests/test_runtime_errors.py",),
    ),
    Bug(
        "report-memory-error-against-itself",
        "infini_onnx/quantize/accuracy.py",
        "_rel_error(out.memory, ref.memory)",
        "_rel_error(ref.memory, ref.memory)",
        ("tests/test_quantize.py",),
    ),
    Bug(
        "int8-static-quantises-the-memory-path",
        "infini_onnx/quantize/modes.py",
        "nodes_to_quantize=_int8_nodes(plan),\n"
        "            nodes_to_exclude=sorted(plan.memory_path),\n"
        "            extra_options={\n"
        '                "MatMulConstBOnly": True,\n'
        '                "ActivationSymmetric"',
        "nodes_to_quantize=None,\n"
        "            nodes_to_exclude=[],\n"
        "            extra_options={\n"
        '                "MatMulConstBOnly": False,\n'
        '                "ActivationSymmetric"',
        ("tests/test_quantize.py", "-k", "memory_error and static"),
    ),
    Bug(
        "checksum-over-data-only",
        "infini_onnx/runtime/statefile.py",
        "h = hashlib.sha256(canonical.encode())",
        "h = hashlib.sha256()",
        ("tests/test_runtime_state.py",),
    ),
    Bug(
        "state-written-in-place",
        "infini_onnx/runtime/statefile.py",
        "tmp.write_bytes(",
        "Path(path).write_bytes(",
        ("tests/test_runtime_state.py",),
    ),
    Bug(
        "sampler-ignores-temperature",
        "infini_onnx/runtime/sampling.py",
        "scaled = logits[order].astype(np.float64) / o.temperature",
        "scaled = logits[order].astype(np.float64)",
        ("tests/test_sampling.py",),
    ),
    Bug(
        "sampler-ignores-top-k",
        "infini_onnx/runtime/sampling.py",
        "order = order[: o.top_k]",
        "order = order[:]",
        ("tests/test_sampling.py",),
    ),
    Bug(
        "sampler-ignores-top-p",
        "infini_onnx/runtime/sampling.py",
        "keep = int(np.searchsorted(np.cumsum(probs), o.top_p)) + 1",
        "keep = len(order)",
        ("tests/test_sampling.py",),
    ),
    Bug(
        "model-id-hashes-config-only",
        "infini_onnx/modeldir.py",
        ", *sorted(weight_files(model_dir), key=lambda p: p.name)]",
        "]",
        ("tests/test_export.py", "-k", "model_id"),
    ),
    Bug(
        "text-decoder-does-not-hold-back",
        "infini_onnx/runtime/textio.py",
        "if text.endswith(INCOMPLETE) and len(self.ids) - self.prefix < MAX_HELD:",
        "if False:",
        ("tests/test_sampling.py",),
    ),
    Bug(
        "from-host-without-shape-checks",
        "infini_onnx/runtime/state.py",
        "if host[name].shape != shape:",
        "if False:",
        ("tests/test_runtime_state.py",),
    ),
    Bug(
        "from-host-without-dtype-cast",
        "infini_onnx/runtime/state.py",
        "arrays[name] = host[name].astype(dtype, copy=False)",
        "arrays[name] = host[name]",
        ("tests/test_quantize.py", "-k", "fp16"),
    ),
    Bug(
        "validation-tolerance-1e-1",
        "infini_onnx/export/validate.py",
        '"fp32": Tolerance(1e-4, 1e-5)',
        '"fp32": Tolerance(1e-1, 1e-5)',
        ("tests/test_export.py", "-k", "validat"),
    ),
    Bug(
        "new-stream-generates-from-eos",
        "infini_onnx/runtime/stream.py",
        "prompt = [self._model.config.bos_token_id]",
        "prompt = [self._model.config.eos_token_id]",
        ("tests/test_runtime.py",),
    ),
    Bug(
        "feed-reads-all-chunks-first",
        "infini_onnx/runtime/stream.py",
        "self._ingest((self._validated(c, 1) for c in _chunks(tokens)), all_logits)",
        "self._ingest([self._validated(c, 1) for c in _chunks(tokens)], all_logits)",
        ("tests/test_runtime.py",),
    ),
    Bug(
        "training-ignores-the-answer-weight",
        "infini_onnx/train.py",
        "weights[-n_answer:] = answer_weight",
        "weights[-n_answer:] = 1.0",
        ("tests/test_training.py",),
    ),
    # Format 2's local window (issue 25): each caught by the float64 reference, the step graph
    # against the reference, or the far-position test.
    Bug(
        "window-one-token-short",
        "infini_onnx/model/modeling.py",
        "ages[:, None, :] + new[None, :, None] <= reach",
        "ages[:, None, :] + new[None, :, None] < reach",
        ("tests/test_model.py", "-k", "window_matches"),
    ),
    Bug(
        "window-stops-at-the-segment-start",
        "infini_onnx/model/modeling.py",
        "seen = position if c.local_window is not None else position % c.segment_len",
        "seen = position % c.segment_len",
        ("tests/test_model.py", "-k", "window_matches"),
    ),
    Bug(
        "ring-write-at-the-wrong-slot",
        "infini_onnx/runtime/state.py",
        "slots, kept = ring_slots(position, T, ring.shape[3])",
        "slots, kept = ring_slots(position + 1, T, ring.shape[3])",
        ("tests/test_window.py", "-k", "random_chunks"),
    ),
    Bug(
        "commit-drops-the-window",
        "infini_onnx/stepgraph/state_spec.py",
        'StateTensor("past_key", "new_key", MODEL, ("B", "L", "G", "K", "d"), RING, None)',
        'StateTensor("past_key", "new_key", MODEL, ("B", "L", "G", "K", "d"), RING, EMPTY)',
        ("tests/test_window.py", "-k", "random_chunks"),
    ),
    Bug(
        "positions-drift-with-the-stream",
        "infini_onnx/model/modeling.py",
        "torch.arange(K + T, device=position.device), c.head_dim, c.rope_theta, dtype",
        "torch.arange(K + T, device=position.device) + position[0], c.head_dim, "
        "c.rope_theta, dtype",
        ("tests/test_window.py", "-k", "far_positions"),
    ),
]


def copy_repository(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the checkout (no venv, no caches)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dst / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name.decode())


def run_bug(bug: Bug, copy: Path) -> tuple[bool, str, float]:
    """Put the bug in the copy, run its tests, take it out. (caught, summary, seconds)."""
    path = copy / bug.file
    original = path.read_text()
    if original.count(bug.old) != 1:
        raise SystemExit(
            f"{bug.name}: the line to change occurs {original.count(bug.old)} "
            f"times in {bug.file} (expected once): update tests/mutation/known_bugs.py"
        )
    path.write_text(original.replace(bug.old, bug.new))
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *bug.tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    lines = result.stdout.strip().splitlines()
    failed = [line.split()[1] for line in lines if line.startswith("FAILED")]
    summary = failed[0] if failed else (lines[-1] if lines else result.stderr.strip()[-200:])
    return result.returncode == 1, summary, time.perf_counter() - start


def main(patterns: list[str]) -> int:
    bugs = [b for b in BUGS if not patterns or any(p in b.name for p in patterns)]
    survivors = []
    with tempfile.TemporaryDirectory(prefix="known-bugs-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        for bug in bugs:
            caught, summary, seconds = run_bug(bug, copy)
            print(
                f"{'caught ' if caught else 'SURVIVED'} {bug.name:40s} {seconds:5.0f} s  {summary}",
                flush=True,
            )
            if not caught:
                survivors.append(bug.name)
    print(f"{len(bugs) - len(survivors)} of {len(bugs)} bugs caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
