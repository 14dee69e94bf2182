"""Analytic FLOP counts from a model's config (one multiply-add = 2 FLOPs).

Per token of a whole-segment ingest call of infini-llama (segment N: P = 0, T = N, the last
position's logits only), with D hidden, I intermediate, H query heads, G key/value heads,
d head_dim, L layers, V vocabulary:

    dense      2 * (D*H*d + 2*D*G*d + H*d*D + 3*D*I)       q, k, v, o, gate, up, down
    attention  4 * N * H * d                               q k^T and A v over the N x N scores
    memory     H * (2d^2 + 2d)                             read: sigma(q) M, sigma(q) z
             + G * (2d^2 + d)                              write (linear): sigma(K)^T V, sum
             + G * (2d^2 + 2d)                             delta rule only: sigma(K) M, sigma(K) z
    total      L * (dense + attention + memory) + 2 * D * V / N    LM head once per segment

Attention counts the full N x N score matrix because that is what the step graph computes (the
causal half is masked, not skipped); counting only the causal half lowers the total by
L * 2 * (N - 1) * H * d. Elementwise work (norms, RoPE, softmax, sigma, the gate mix) and the
embedding lookup are not counted.
"""

from __future__ import annotations

from infini_onnx.config import InfiniConfig


def dense_flops_per_token(c: InfiniConfig) -> int:
    """The weight matmuls of one layer, per token."""
    D, I, H, G, d = (
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )
    return 2 * (D * H * d + 2 * D * G * d + H * d * D + 3 * D * I)


def attention_flops_per_token(c: InfiniConfig, keys: int) -> int:
    """Local attention of one layer, per query token attending to `keys` keys."""
    return 4 * keys * c.num_attention_heads * c.head_dim


def memory_flops_per_token(c: InfiniConfig) -> int:
    """Compressive memory read and write of one layer, per token."""
    H, G, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    read = H * (2 * d * d + 2 * d)
    write = G * (2 * d * d + d)
    if c.memory_update == "delta":
        write += G * (2 * d * d + 2 * d)
    return read + write


def ingest_flops_per_token(c: InfiniConfig) -> float:
    """Per token of whole-segment ingest with last-position logits (the formula above)."""
    N = c.segment_len
    per_layer = (
        dense_flops_per_token(c) + attention_flops_per_token(c, N) + memory_flops_per_token(c)
    )
    return c.num_hidden_layers * per_layer + 2 * c.hidden_size * c.vocab_size / N


def matmul_params(c: InfiniConfig) -> int:
    """Weights that take part in matmuls per token (all layers, without embedding and LM head)."""
    return c.num_hidden_layers * dense_flops_per_token(c) // 2
