"""The full-attention baseline: the reference weights as a plain Llama (no compressive memory,
RoPE over absolute positions, a KV cache that grows with the stream), exported to ONNX.

The graph has the layout of Hugging Face optimum's decoder exports: input_ids [B, T] and
per-layer past_key_values.{i}.key / .value [B, G, P, d] -> logits [B, 1, V] (last position)
and present.{i}.key / .value [B, G, P+T, d]. One call per chunk of tokens or per decoded
token; every call concatenates the cache and returns it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.model.modeling import apply_rope, rope_cos_sin


def cache_names(layers: int, prefix: str) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (or present.0.key, ...)."""
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class FullAttentionLlama(nn.Module):
    """Runs an infini-llama's weights as a standard Llama (the gates are unused)."""

    def __init__(self, model: InfiniLlamaForCausalLM):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids: Tensor, *cache: Tensor) -> tuple[Tensor, ...]:
        c, inner = self.config, self.model.model
        B, T = input_ids.shape
        H, G, d, r = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_groups
        P = cache[0].shape[2]
        cos, sin = rope_cos_sin(torch.arange(P, P + T), d, c.rope_theta)
        causal = torch.arange(P + T)[None, :] <= (P + torch.arange(T))[:, None]  # [T, P+T]
        x = inner.embed_tokens(input_ids)
        present = []
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, H, d).transpose(1, 2)
            k = attn.k_proj(h).view(B, T, G, d).transpose(1, 2)
            v = attn.v_proj(h).view(B, T, G, d).transpose(1, 2)
            k = torch.cat([cache[2 * i], apply_rope(k, cos, sin)], dim=2)  # [B, G, P+T, d]
            v = torch.cat([cache[2 * i + 1], v], dim=2)
            q = apply_rope(q, cos, sin).view(B, G, r, T, d)
            scores = (q @ k.unsqueeze(2).transpose(-1, -2)) / d**0.5
            a = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v.unsqueeze(2)
            x = x + attn.o_proj(a.view(B, H, T, d).transpose(1, 2).reshape(B, T, H * d))
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
            present += [k, v]
        return self.model.lm_head(inner.norm(x[:, -1:])), *present


def export_llama(model: InfiniLlamaForCausalLM, out_path: Path, opset: int = 18) -> Path:
    """torch.onnx (dynamo) export with B, T and P dynamic (traced at sizes >= 2)."""
    import logging
    import warnings

    from torch.export import Dim

    c = model.config
    L = c.num_hidden_layers
    shape = (2, c.num_key_value_heads, 2, c.head_dim)
    args = (torch.zeros(2, 3, dtype=torch.long), *(torch.randn(shape) for _ in range(2 * L)))
    batch, tokens, past = Dim("batch"), Dim("tokens"), Dim("past")
    dynamic_shapes = {
        "input_ids": {0: batch, 1: tokens},
        "cache": tuple({0: batch, 2: past} for _ in range(2 * L)),
    }
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FullAttentionLlama(model.eval()),
            args,
            dynamic_shapes=dynamic_shapes,
            input_names=["input_ids", *cache_names(L, "past_key_values")],
            output_names=["logits", *cache_names(L, "present")],
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    tmp = out_path.with_name(out_path.name + ".tmp")
    program.save(str(tmp))
    tmp.replace(out_path)
    return out_path
