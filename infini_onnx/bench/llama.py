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

from infini_onnx.atomic import atomic_output
from infini_onnx.export.exporter import trace_module
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.model.modeling import rope_cos_sin, rotate, wide


def cache_names(layers: int, prefix: str) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (or present.0.key, ...)."""
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class FullAttentionLlama(nn.Module):
    """Runs an infini-llama's weights as a standard Llama: each layer's attention (the model's
    `attend`) over the whole cache of rotated keys, positions from the stream start, no memory
    (the gates are unused)."""

    def __init__(self, model: InfiniLlamaForCausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, *cache: Tensor) -> tuple[Tensor, ...]:
        inner, c = self.model.model, self.model.config
        x = inner.embed_tokens(input_ids)  # [B, T, D]
        P, T = cache[0].shape[2], input_ids.shape[1]
        positions = torch.arange(P, P + T)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, wide(x.dtype))
        causal = torch.arange(P + T)[None, :] <= positions[:, None]  # [T, P+T]
        bias = torch.zeros(causal.shape, dtype=wide(x.dtype)).masked_fill(~causal, -torch.inf)
        present = []
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(x))
            k = torch.cat([cache[2 * i], rotate(k, cos, sin)], dim=2)  # [B, G, P+T, d]
            v = torch.cat([cache[2 * i + 1], v], dim=2)
            a = attn.attend(rotate(q, cos, sin), [(k, v, bias)])
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
