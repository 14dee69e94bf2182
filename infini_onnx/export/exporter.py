"""Export one segment step of a model directory to the ONNX step graph (SPEC section 3)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from infini_onnx import contract
from infini_onnx.errors import InfiniError
from infini_onnx.model import InfiniLlamaForCausalLM, from_pretrained
from infini_onnx.model.io import TOKENIZER

DEFAULT_OPSET = 18


class StepGraph(nn.Module):
    """The step function with `num_logits` as a tensor input, as the graph takes it."""

    def __init__(self, model: InfiniLlamaForCausalLM):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids,
        past_key,
        past_value,
        memory,
        norm,
        memory_acc,
        norm_acc,
        num_logits: Tensor,
    ):
        n = num_logits[0].item()  # becomes a plain Slice start in ONNX
        torch._check(n >= 1)
        return self.model.step(
            input_ids, past_key, past_value, memory, norm, memory_acc, norm_acc, num_logits=n
        )


def example_inputs(
    model: InfiniLlamaForCausalLM,
    batch: int,
    tokens: int,
    past: int,
    num_logits: int = 1,
    seed: int = 0,
) -> tuple[Tensor, ...]:
    """Random step-graph inputs (state scaled like a real stream's: positive norm)."""
    c = model.config
    L, G, d = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
    g = torch.Generator().manual_seed(seed)
    cache = lambda: torch.randn(batch, L, G, past, d, generator=g).to(model.dtype)  # noqa: E731
    memory = torch.randn(batch, L, G, d, d, generator=g)
    norm = torch.rand(batch, L, G, d, generator=g) * 10
    return (
        torch.randint(0, c.vocab_size, (batch, tokens), generator=g),
        cache(),
        cache(),
        memory,
        norm,
        memory + torch.randn(batch, L, G, d, d, generator=g),
        norm + torch.rand(batch, L, G, d, generator=g),
        torch.tensor([num_logits]),
    )


def model_id(model_dir: Path) -> str:
    """sha256 over config.json and the weight files: identifies the model across variants."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.name == "config.json" or f.name.endswith(".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def export_model(
    model_dir: str | Path,
    out_path: str | Path,
    opset: int = DEFAULT_OPSET,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Trace the step graph of `model_dir` into `out_path` (written atomically)."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    t0 = time.perf_counter()
    model = from_pretrained(model_dir)
    log(f"loaded {model_dir} ({time.perf_counter() - t0:.1f}s)")
    c = model.config
    # Trace with every dynamic size >= 2 (torch.export specialises 0 and 1).
    args = example_inputs(model, batch=2, tokens=min(3, c.segment_len), past=2)
    batch, tokens, past = Dim("batch"), Dim("tokens"), Dim("past")
    state_axes = {0: batch}
    dynamic_shapes = {
        "input_ids": {0: batch, 1: tokens},
        "past_key": {0: batch, 3: past},
        "past_value": {0: batch, 3: past},
        "memory": state_axes,
        "norm": state_axes,
        "memory_acc": state_axes,
        "norm_acc": state_axes,
        "num_logits": None,
    }
    t0 = time.perf_counter()
    program = torch.onnx.export(
        StepGraph(model),
        args,
        dynamic_shapes=dynamic_shapes,
        input_names=list(contract.INPUT_NAMES),
        output_names=list(contract.OUTPUT_NAMES),
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    proto = program.model_proto
    log(f"traced opset {opset} ({time.perf_counter() - t0:.1f}s)")
    metadata = {
        contract.KEY_FORMAT_VERSION: str(contract.FORMAT_VERSION),
        contract.KEY_CONFIG: json.dumps(c.to_dict(), sort_keys=True),
        contract.KEY_VARIANT: "fp32",
        contract.KEY_MODEL_ID: model_id(model_dir),
    }
    if (model_dir / TOKENIZER).is_file():
        metadata[contract.KEY_TOKENIZER] = (model_dir / TOKENIZER).read_text()
    onnx.helper.set_model_props(proto, metadata)
    save_atomic(proto, out_path)
    return out_path


def save_atomic(proto: onnx.ModelProto, out_path: Path) -> None:
    """Write to a temporary name beside out_path, then rename: never a half-written file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, out_path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InfiniError(f"{out_path}: cannot write ({e.strerror or e})") from None
