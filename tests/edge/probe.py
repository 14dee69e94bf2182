"""What one machine computes: every token's logits over a text and the greedy tokens after it,
for each step graph given. The aarch64 job (tests/edge/aarch64.py) runs this on x86 and on
emulated aarch64 and compares the two files. Runtime only: no torch, no onnx.

    python probe.py OUT.npz TEXT_FILE MODEL.onnx...
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import tokenizers

from infini_onnx.runtime import InfiniModel, Stream

GREEDY_TOKENS = 32


def probe(model_path: Path, text: str) -> dict[str, np.ndarray]:
    model = InfiniModel(model_path)
    stream = Stream(model)
    logits = stream.feed_text(text, all_logits=True)  # [S, V]
    greedy = list(stream.generate(max_new_tokens=GREEDY_TOKENS, temperature=0, stop=()))
    return {f"{model_path.stem}/logits": logits, f"{model_path.stem}/greedy": np.array(greedy)}


def main(out: str, text_file: str, *models: str) -> None:
    text = Path(text_file).read_text()
    arrays: dict[str, np.ndarray] = {}
    for path in models:
        arrays.update(probe(Path(path), text))
    machine = {
        "machine": platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "tokenizers": tokenizers.__version__,
        "torch_importable": importlib.util.find_spec("torch") is not None,
        "onnx_importable": importlib.util.find_spec("onnx") is not None,
    }
    arrays["machine"] = np.array(json.dumps(machine))
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
