"""The full-attention baseline: the reference weights as a plain Llama (no compressive memory,
RoPE over absolute positions, a KV cache that grows with the stream), exported to ONNX.

The graph has the layout of Hugging Face optimum's decoder exports: input_ids [B, T] and
per-layer past_key_values.{i}.key / .value [B, G, P, d] -> logits [B, 1, V] (last position)
and present.{i}.key / .value [B, G, P+T, d]. One call per chunk of tokens or per decoded
token; every call concatenates the cache and returns it.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import torch
from torch import Tensor, nn
from torch.export import Dim

from infini_onnx.export.exporter import trace_module
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.stepgraph.files import atomic_output


def cache_names(layers: int, prefix: str) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (or present.0.key, ...)."""
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class FullAttentionLlama(nn.Module):
    """Runs an infini-llama's weights as a standard Llama: each layer's local attention over the
    whole cache (positions from the stream start), no memory (the gates are unused)."""

    def __init__(self, model: InfiniLlamaForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, *cache: Tensor) -> tuple[Tensor, ...]:
        inner = self.model.model
        x = inner.embed_tokens(input_ids)  # [B, T, D]
        present = []
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(x))
            a, k, v = attn.local(q, k, v, cache[2 * i], cache[2 * i + 1])  # k, v [B, G, P+T, d]
            x = layer.feed_forward(x + attn.output(a))
            present += [k, v]
        return self.model.lm_head(inner.norm(x[:, -1:])), *present


def export_llama(model: InfiniLlamaForCausalLM, out_path: Path, opset: int = 18) -> Path:
    """The full-attention graph with B, T and P dynamic, written atomically."""
    c = model.config
    L = c.num_hidden_layers
    shape = (2, c.num_key_value_heads, 2, c.head_dim)
    args = (torch.zeros(2, 3, dtype=torch.long), *(torch.randn(shape) for _ in range(2 * L)))
    batch, tokens, past = Dim("batch"), Dim("tokens"), Dim("past")
    dynamic_shapes = {
        "input_ids": {0: batch, 1: tokens},
        "cache": tuple({0: batch, 2: past} for _ in range(2 * L)),
    }
    graph = trace_module(
        FullAttentionLlama(model),
        args,
        dynamic_shapes,
        ["input_ids", *cache_names(L, "past_key_values")],
        ["logits", *cache_names(L, "present")],
        opset,
    )
    with atomic_output(out_path) as tmp:
        ir.save(graph, tmp)
    return out_path
