"""The reference infini-llama model in PyTorch (docs/design.md, "The model").

Shapes: B batch, T new tokens, K window slots (the local-attention cache), H query heads,
G key/value heads, d head_dim, L layers, D hidden size.

The one primitive is `step`: it runs T new tokens of the current segment against the window of
earlier tokens and the memory, exactly the ONNX step graph of format 2 (docs/design.md, the
state of stepgraph/state_spec.py). `forward` runs any number of tokens by calling `step` once
per segment piece and rolling the state, so both modes share every line of math.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infini_onnx import modeldir
from infini_onnx.config import InfiniConfig, preset_config
from infini_onnx.model import weights
from infini_onnx.stepgraph.state_spec import FLOAT32, LATEST, ring_slots, window_reach

CLAMP_MIN = 1e-6
# A gate logit whose sigmoid is exactly 0 in float32 (and whose gradient is 0): the head takes
# nothing from the memory, so the model is window-only (docs/design.md, "Window-only models").
CLOSED_GATE = -1e4


def wide(dtype: torch.dtype) -> torch.dtype:
    """The precision of norms, RoPE, softmax and the memory: float32 for fp16 and fp32 models,
    float64 for a float64 model (a true float64 reference for drift checks)."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class StreamState:
    """Everything a stream carries between calls (stepgraph/state_spec.py FORMAT_2)."""

    memory: Tensor  # [B, L, G, d, d] float32, M at the start of the current segment
    norm: Tensor  # [B, L, G, d] float32, z at the start of the current segment
    memory_acc: Tensor  # [B, L, G, d, d] float32, memory plus the writes of the cached tokens
    norm_acc: Tensor  # [B, L, G, d] float32
    past_key: Tensor  # [B, L, G, K, d] model dtype: the window's keys (before RoPE), a ring
    past_value: Tensor  # [B, L, G, K, d] model dtype
    position: Tensor  # [B] int64: tokens seen (every row at the same position)
    segment_len: int

    @classmethod
    def zeros(
        cls, config: InfiniConfig, batch: int = 1, dtype=torch.float32, device=None
    ) -> StreamState:
        tensors = {}
        for t in LATEST.tensors:
            shape = LATEST.shape(t.dims, config, B=batch)
            tensors[t.name] = torch.zeros(
                shape, dtype=wide(dtype) if t.dtype == FLOAT32 else dtype, device=device
            )
        position = torch.zeros(batch, dtype=torch.int64, device=device)
        return cls(**tensors, position=position, segment_len=config.segment_len)

    @property
    def tokens_seen(self) -> int:
        return int(self.position[0])

    def tensors(self) -> list[Tensor]:
        """Every tensor of the state, in field order (what `from_tensors` takes back)."""
        return [getattr(self, f.name) for f in fields(self) if f.name != "segment_len"]

    @classmethod
    def from_tensors(cls, tensors: list[Tensor], segment_len: int) -> StreamState:
        return cls(*tensors, segment_len=segment_len)

    def map(self, fn) -> StreamState:
        """The state with fn applied to every tensor (detach, to a device, ...)."""
        return StreamState.from_tensors([fn(t) for t in self.tensors()], self.segment_len)

    @property
    def cached(self) -> int:
        """Tokens of the current segment already seen (its memory writes are in the acc)."""
        return self.tokens_seen % self.segment_len

    def advance(
        self, tokens: int, new_key: Tensor, new_value: Tensor, memory_acc: Tensor, norm_acc: Tensor
    ) -> StreamState:
        """The state after a step of `tokens` new tokens (FORMAT_2's rules, out of place so
        that gradients flow): the new rows go into the ring, and at a completed segment the
        memory commits."""
        key, value = self.past_key, self.past_value
        slots, kept = ring_slots(self.tokens_seen, tokens, key.shape[3])
        if kept:
            index = torch.tensor(slots, device=key.device)
            key = key.index_copy(3, index, new_key[:, :, :, tokens - kept :])
            value = value.index_copy(3, index, new_value[:, :, :, tokens - kept :])
        memory, norm = self.memory, self.norm
        if self.cached + tokens == self.segment_len:  # segment complete: commit the memory
            memory, norm = memory_acc, norm_acc
        return StreamState(
            memory, norm, memory_acc, norm_acc, key, value, self.position + tokens, self.segment_len
        )


# --- Infini-attention memory: the only place its math lives -------------------------------


def sigma(x: Tensor) -> Tensor:
    """The memory's kernel feature map, elu(x) + 1 (always > 0)."""
    return F.elu(x) + 1.0


def memory_read(sq: Tensor, memory: Tensor, norm: Tensor) -> Tensor:
    """A_mem = sigma(q) M / clamp(sigma(q) z). sq [B, G, r, T, d], memory [B, G, d, d],
    norm [B, G, d] -> [B, G, r, T, d] (r query heads per key/value head)."""
    numerator = sq @ memory.unsqueeze(2)  # [B, G, r, T, d]
    denominator = sq @ norm[:, :, None, :, None]  # [B, G, r, T, 1]
    return numerator / denominator.clamp(min=CLAMP_MIN)


def memory_write(
    sk: Tensor, v: Tensor, memory: Tensor, norm: Tensor, rule: str, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The write of T tokens into memory as of the segment start.
    sk, v [B, G, T, d], memory [B, G, d, d], norm [B, G, d] -> (dM [B, G, d, d], dz [B, G, d]).

    `weights` [B, T] (training only, None = 1) counts each token's write that many times:
    dM = sigma(K)^T (w * (V - retrieved)), dz = sum_t w_t sigma(K_t) ("virtual length",
    docs/training.md). For the linear rule a weight of c is exactly c repeated writes; for the
    delta rule it approximates them (all c copies are written against the old memory)."""
    if rule == "delta":
        retrieved = (sk @ memory) / (sk @ norm.unsqueeze(-1)).clamp(min=CLAMP_MIN)
        v = v - retrieved
    if weights is not None:
        w = weights[:, None, :, None].to(sk.dtype)  # [B, 1, T, 1]
        return sk.transpose(-1, -2) @ (w * v), (w * sk).sum(dim=2)
    return sk.transpose(-1, -2) @ v, sk.sum(dim=2)


# --- Llama building blocks -----------------------------------------------------------------


def stacked_linear(x: Tensor, *layers: nn.Linear) -> tuple[Tensor, ...]:
    """x through bias-free Linear layers that share it as input. When exported, one matmul of
    the stacked weights (folded into one initializer at export): the graph reads x once, and
    an int8 graph quantises it once (docs/export.md, "Fusions"). In PyTorch one call each:
    stacking would copy the weights at every call."""
    if torch.compiler.is_exporting():
        sizes = [layer.out_features for layer in layers]
        return F.linear(x, torch.cat([layer.weight for layer in layers])).split(sizes, dim=-1)
    return tuple(layer(x) for layer in layers)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(wide(x.dtype))
        # x / sqrt(...), not x * rsqrt(...): ONNX Runtime fuses this form into one
        # SimplifiedLayerNormalization node (docs/export.md, "Fusions").
        x32 = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.to(x32.dtype)).to(x.dtype)


def rope_cos_sin(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin [..., d/2] for integer positions [...] (one angle per pair of Llama's
    rotate_half layout)."""
    exponents = torch.arange(0, head_dim, 2, dtype=dtype, device=positions.device)
    inv_freq = theta ** (-exponents / head_dim)
    freqs = positions.to(dtype)[..., None] * inv_freq  # [..., d/2]
    return freqs.cos(), freqs.sin()


def ring_ages(position: Tensor, slots: int) -> Tensor:
    """[B, K] in 1..K: how many tokens before the next one the token in each ring slot is, for
    a ring whose slot j holds stream position p with p mod K = j (position [B]: tokens seen).
    The token exists only where age <= position."""
    slot = torch.arange(slots, device=position.device)
    return (position[:, None] - 1 - slot[None, :]) % slots + 1


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE of x [..., S, d] by angles whose cos, sin [..., S, d/2] broadcast against it
    (Llama's rotate_half layout), computed in cos.dtype."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].to(cos.dtype), x[..., half:].to(cos.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rotate_at(x: Tensor, positions: Tensor, cos_table: Tensor, sin_table: Tensor) -> Tensor:
    """x [B, n, S, d] rotated at positions [B, S] (int64) of the tables cos, sin [P, d/2]."""
    return rotate(x, cos_table[positions][:, None], sin_table[positions][:, None])


@torch.library.custom_op("infini::rotary_embedding", mutates_args=())
def rotary_embedding(x: Tensor, positions: Tensor, cos_table: Tensor, sin_table: Tensor) -> Tensor:
    """`rotate_at` as one op: one ONNX Runtime RotaryEmbedding node when exported
    (export/contrib_ops.py)."""
    return rotate_at(x, positions, cos_table, sin_table)


@rotary_embedding.register_fake
def _(x: Tensor, positions: Tensor, cos_table: Tensor, sin_table: Tensor) -> Tensor:
    return torch.empty_like(x)


def apply_rope(x: Tensor, positions: Tensor, frame: Frame) -> Tensor:
    """x [B, n, S, d] rotated at positions [B, S] of the frame's tables: the custom op when
    exporting, plain tensor ops (which autograd differentiates) otherwise."""
    cos, sin = frame.cos_table, frame.sin_table
    if torch.compiler.is_exporting():
        return rotary_embedding(x.to(cos.dtype), positions, cos, sin).to(x.dtype)
    return rotate_at(x, positions, cos, sin)


@dataclass
class Frame:
    """Where the local attention of one call places and masks its keys, the same in every
    layer (computed once per call by `window_frame`)."""

    cos_table: Tensor  # [K + T, d/2]: the angles of every position of the frame
    sin_table: Tensor
    new_positions: Tensor  # [B, T]: the new tokens at K + i
    ring_positions: Tensor  # [B, K]: ring slot j's key at K - age_j
    ring_bias: Tensor  # [B, 1, 1, T, K]: 0 where a query sees a ring key, -inf elsewhere
    new_bias: Tensor  # [B, 1, 1, T, T]: the same for the new keys


def window_frame(config: InfiniConfig, position: Tensor, T: int, K: int, dtype) -> Frame:
    """The frame of a call of T new tokens after `position` [B] tokens, over a ring of K slots.

    RoPE works in a frame where a ring slot's key sits at K - age (age: how many tokens before
    the call's first token it is) and new token i at K + i, so every score depends only on the
    distance between two stream positions, exactly, at any stream length. A query sees a key
    that exists (in the current segment, for a model without a window), comes no later than
    the query, and lies within W - 1 tokens before it."""
    c = config
    B = position.shape[0]
    new = torch.arange(T, device=position.device)
    cos_table, sin_table = rope_cos_sin(
        torch.arange(K + T, device=position.device), c.head_dim, c.rope_theta, dtype
    )
    ages = ring_ages(position, K)  # [B, K]: slot j holds the token at position - ages[:, j]
    reach = window_reach(c)
    seen = position if c.local_window is not None else position % c.segment_len
    ring_visible = (ages[:, None, :] <= seen[:, None, None]) & (
        ages[:, None, :] + new[None, :, None] <= reach
    )  # [B, T, K]
    distance = new[:, None] - new[None, :]  # [T, T]: query i - key i'
    new_visible = ((distance >= 0) & (distance <= reach)).expand(B, T, T)
    return Frame(
        cos_table,
        sin_table,
        (K + new).expand(B, T),
        K - ages,
        mask_bias(ring_visible, dtype),
        mask_bias(new_visible, dtype),
    )


def mask_bias(visible: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T, S] visibility -> the additive bias [B, 1, 1, T, S] (0 or -inf): one small select
    and a broadcast Add, not a select over every head's scores (docs/export.md, "Fusions")."""
    bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return bias.masked_fill(~visible, -torch.inf)[:, None, None]


class InfiniAttention(nn.Module):
    def __init__(self, config: InfiniConfig):
        super().__init__()
        self.config = config
        H, G, d, D = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.hidden_size,
        )
        self.q_proj = nn.Linear(D, H * d, bias=False)
        self.k_proj = nn.Linear(D, G * d, bias=False)
        self.v_proj = nn.Linear(D, G * d, bias=False)
        self.o_proj = nn.Linear(H * d, D, bias=False)
        self.gate = nn.Parameter(torch.zeros(H))  # beta: one scalar per query head

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, D] -> q [B, H, T, d], k [B, G, T, d], v [B, G, T, d] (before RoPE)."""
        c = self.config
        B, T, _ = x.shape
        H, G, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, k, v = stacked_linear(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, H, d).transpose(1, 2)
        k = k.view(B, T, G, d).transpose(1, 2)
        v = v.view(B, T, G, d).transpose(1, 2)
        return q, k, v

    def local(
        self, q: Tensor, k: Tensor, v: Tensor, past_key: Tensor, past_value: Tensor, frame: Frame
    ) -> Tensor:
        """A_dot [B, G, r, T, d]: causal softmax attention of the T new queries over the window
        (docs/design.md, "The local window"): the ring's K earlier tokens and the new ones, as
        `frame` places and masks them. q [B, H, T, d], k, v [B, G, T, d] (before RoPE),
        past_key/value [B, G, K, d] (before RoPE)."""
        ring = apply_rope(past_key, frame.ring_positions, frame)
        new = apply_rope(k, frame.new_positions, frame)
        q_rot = apply_rope(q, frame.new_positions, frame)
        return self.attend(q_rot, [(ring, past_value, frame.ring_bias), (new, v, frame.new_bias)])

    def attend(self, q_rot: Tensor, parts: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """Softmax attention of rotated queries q_rot [B, H, T, d] over parts of the keys, each
        (rotated keys [B, G, S, d], values [B, G, S, d], additive mask bias [B, 1, 1, T, S]),
        as one softmax over all of them -> [B, G, r, T, d]. The parts are never joined: a
        join would copy the whole window at every call (docs/export.md, "Fusions")."""
        B, H, T, d = q_rot.shape
        G = parts[0][0].shape[1]
        q_rot = q_rot.view(B, G, self.config.num_groups, T, d)
        scores = [
            (q_rot @ keys.unsqueeze(2).transpose(-1, -2) / d**0.5).to(bias.dtype) + bias
            for keys, _, bias in parts
        ]  # [B, G, r, T, S] each
        top = scores[0].amax(-1, keepdim=True)
        for s in scores[1:]:
            top = torch.maximum(top, s.amax(-1, keepdim=True))
        weights = [torch.exp(s - top) for s in scores]
        total = sum(w.sum(-1, keepdim=True) for w in weights)  # [B, G, r, T, 1]
        half = parts[0][1].dtype != total.dtype  # half values: normalise first (sums stay small)
        if half:
            weights = [w / total for w in weights]
        out = sum(w.to(v.dtype) @ v.unsqueeze(2) for w, (_, v, _) in zip(weights, parts))
        return out if half else out / total  # [B, G, r, T, d]; float32: normalised on [T, d]

    def output(self, a: Tensor) -> Tensor:
        """o_proj of the heads' outputs a [B, G, r, T, d] -> [B, T, D]."""
        B, G, r, T, d = a.shape
        return self.o_proj(a.view(B, G * r, T, d).transpose(1, 2).reshape(B, T, G * r * d))

    def forward(
        self,
        x: Tensor,  # [B, T, D]
        past_key: Tensor,  # [B, G, K, d]
        past_value: Tensor,  # [B, G, K, d]
        memory: Tensor,  # [B, G, d, d]
        norm: Tensor,  # [B, G, d]
        memory_acc: Tensor,  # [B, G, d, d]
        norm_acc: Tensor,  # [B, G, d]
        frame: Frame,
        write_weights: Tensor | None = None,  # [B, T], training only (see memory_write)
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns the attention output [B, T, D], the new tokens' keys (before RoPE) and
        values [B, G, T, d], and the accumulators with their memory writes added."""
        c = self.config
        B, T, _ = x.shape
        G, d, r = c.num_key_value_heads, c.head_dim, c.num_groups
        q, k, v = self.project(x)
        a_dot = self.local(q, k, v, past_key, past_value, frame)

        # Compressive memory, float32 (float64 for a float64 model); un-rotated q and k.
        f = wide(x.dtype)
        sq = sigma(q.to(f)).view(B, G, r, T, d)
        a_mem = memory_read(sq, memory, norm)  # [B, G, r, T, d]
        d_mem, d_norm = memory_write(
            sigma(k.to(f)), v.to(f), memory, norm, c.memory_update, write_weights
        )

        g = torch.sigmoid(self.gate.to(f)).view(G, r, 1, 1)
        a = (g * a_mem + (1 - g) * a_dot.to(f)).to(x.dtype)  # [B, G, r, T, d]
        return self.output(a), k, v, memory_acc + d_mem, norm_acc + d_norm


class DecoderLayer(nn.Module):
    def __init__(self, config: InfiniConfig):
        super().__init__()
        D, I = config.hidden_size, config.intermediate_size
        self.input_layernorm = RMSNorm(D, config.rms_norm_eps)
        self.self_attn = InfiniAttention(config)
        self.post_attention_layernorm = RMSNorm(D, config.rms_norm_eps)
        self.mlp = nn.ModuleDict(
            dict(
                gate_proj=nn.Linear(D, I, bias=False),
                up_proj=nn.Linear(D, I, bias=False),
                down_proj=nn.Linear(I, D, bias=False),
            )
        )

    def feed_forward(self, x: Tensor) -> Tensor:
        """The residual MLP block (SwiGLU) of x [B, T, D]."""
        h = self.post_attention_layernorm(x)
        gate, up = stacked_linear(h, self.mlp.gate_proj, self.mlp.up_proj)
        return x + self.mlp.down_proj(F.silu(gate) * up)

    def forward(
        self, x: Tensor, *state: Tensor, write_weights: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        attn_out, *new_state = self.self_attn(
            self.input_layernorm(x), *state, write_weights=write_weights
        )
        return self.feed_forward(x + attn_out), *new_state


class InfiniLlamaModel(nn.Module):
    def __init__(self, config: InfiniConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class InfiniLlamaForCausalLM(nn.Module):
    """infini-llama with Hugging Face Llama parameter names (docs/design.md)."""

    def __init__(self, config: InfiniConfig):
        super().__init__()
        self.config = config
        self.model = InfiniLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, **config_overrides
    ) -> InfiniLlamaForCausalLM:
        """Load a model directory; every problem is one ModelDirError naming the file, tensor
        or key. `config_overrides` replace config keys that leave the weights' shapes as they
        are (e.g. local_window, to train a window into a model; validated like the file)."""
        config = replace(modeldir.load_config(model_dir), **config_overrides)
        with torch.device("meta"):
            model = cls(config)
        tensors = weights.load_checked(model_dir, stored_shapes(model))
        model = model.to_empty(device="cpu")
        model.load_state_dict({k: t.to(dtype) for k, t in tensors.items()}, strict=False)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.to(dtype).eval()

    def save_pretrained(
        self,
        model_dir: str | Path,
        tokenizer_json: str | None = None,
        max_shard_bytes: int | None = None,
    ) -> None:
        """Write config.json, the weights (sharded past max_shard_bytes) and tokenizer.json."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / modeldir.CONFIG).write_text(self.config.to_json())
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            tensors.pop("lm_head.weight")
        weights.save_tensors(tensors, model_dir, max_shard_bytes)
        if tokenizer_json is not None:
            (model_dir / modeldir.TOKENIZER).write_text(tokenizer_json)

    def init_weights(self, seed: int = 0, std: float = 0.02) -> None:
        """Random initialisation (normal weights, unit norms, gates at 0 = an even mix)."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                elif name.endswith("self_attn.gate"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    def set_gates(self, logit: float) -> None:
        """Every head's gate logit: sigmoid(logit) of its output comes from the memory.
        CLOSED_GATE makes the model window-only: the memory is still written but never read,
        and training leaves the gates closed (zero gradient)."""
        with torch.no_grad():
            for layer in self.model.layers:
                layer.self_attn.gate.fill_(logit)

    def new_state(self, batch: int = 1, device=None) -> StreamState:
        return StreamState.zeros(self.config, batch, self.dtype, device)

    def step(
        self,
        input_ids: Tensor,  # [B, T] int64
        past_key: Tensor,  # [B, L, G, K, d]
        past_value: Tensor,  # [B, L, G, K, d]
        memory: Tensor,  # [B, L, G, d, d] float32
        norm: Tensor,  # [B, L, G, d] float32
        memory_acc: Tensor,  # [B, L, G, d, d] float32
        norm_acc: Tensor,  # [B, L, G, d] float32
        position: Tensor,  # [B] int64: tokens seen before these
        num_logits: int | None = None,
        write_weights: Tensor | None = None,  # [B, T], training only (see memory_write)
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One call of the step graph (docs/design.md, format 2): T new tokens that stay in
        the current segment (position mod N + T <= segment_len).

        Returns logits [B, min(num_logits, T), V] (float32), new_key/new_value [B, L, G, T, d]
        (for the ring), memory_acc_out [B, L, G, d, d], norm_acc_out [B, L, G, d].
        """
        x = self.model.embed_tokens(input_ids)  # [B, T, D]
        frame = window_frame(
            self.config, position, input_ids.shape[1], past_key.shape[3], wide(self.dtype)
        )
        keys, values, mem_accs, norm_accs = [], [], [], []
        for i, layer in enumerate(self.model.layers):
            x, k, v, m, z = layer(
                x,
                past_key[:, i],
                past_value[:, i],
                memory[:, i],
                norm[:, i],
                memory_acc[:, i],
                norm_acc[:, i],
                frame,
                write_weights=write_weights,
            )
            keys.append(k)
            values.append(v)
            mem_accs.append(m)
            norm_accs.append(z)
        if num_logits is not None:
            x = x[:, -num_logits:]  # the last min(num_logits, T) positions
        logits = self.lm_head(self.model.norm(x)).to(wide(x.dtype))
        stack = lambda ts: torch.stack(ts, dim=1)  # noqa: E731
        return logits, stack(keys), stack(values), stack(mem_accs), stack(norm_accs)

    def forward(
        self,
        input_ids: Tensor,
        state: StreamState | None = None,
        last_logits_only: bool = False,
        write_weights: Tensor | None = None,
    ) -> tuple[Tensor, StreamState]:
        """Run a token sequence of any length [B, S], continuing `state` (a new stream if None).

        Splits the tokens at segment boundaries and calls `step` once per piece; differentiable
        through the memory across segments. Returns logits [B, S, V] ([B, 1, V] for the last
        token with last_logits_only, which skips the LM head elsewhere) and the state after the
        last token, exactly as the runtime loop leaves it (docs/design.md). `write_weights` [B, S]
        (training only) scales each token's memory write (see memory_write).
        """
        if state is None:
            state = self.new_state(input_ids.shape[0], input_ids.device)
        N = self.config.segment_len
        logits, start = [], 0
        while start < input_ids.shape[1]:
            take = min(N - state.cached, input_ids.shape[1] - start)
            piece_weights = (
                None if write_weights is None else write_weights[:, start : start + take]
            )
            out, key, value, mem_acc, norm_acc = self.step(
                input_ids[:, start : start + take],
                state.past_key,
                state.past_value,
                state.memory,
                state.norm,
                state.memory_acc,
                state.norm_acc,
                state.position,
                num_logits=1 if last_logits_only else None,
                write_weights=piece_weights,
            )
            logits.append(out)
            start += take
            state = state.advance(take, key, value, mem_acc, norm_acc)
        return (logits[-1] if last_logits_only else torch.cat(logits, dim=1)), state

    @torch.inference_mode()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, state: StreamState | None = None
    ) -> Iterator[Tensor]:
        """Greedy decoding: feed input_ids [B, S] (continuing `state`), then yield the most
        likely next token [B] and feed it back, max_new_tokens times (lazily: each token is
        fed when the next one is asked for)."""
        logits, state = self(input_ids, state, last_logits_only=True)
        for i in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)  # [B]
            yield token
            if i + 1 < max_new_tokens:
                logits, state = self(token[:, None], state, last_logits_only=True)


def stored_shapes(model: InfiniLlamaForCausalLM) -> dict[str, torch.Size]:
    """Every tensor a model directory of this model holds (a tied LM head is not stored)."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def init_model_dir(
    out_dir: str | Path,
    preset: str = "tiny",
    seed: int = 0,
    gate: float = 0.0,
    **overrides,
) -> InfiniLlamaForCausalLM:
    """Write a randomly initialised model directory with the byte-level tokenizer, every gate
    logit at `gate` (0: an even mix; CLOSED_GATE: window-only)."""
    from infini_onnx.tokenizer import byte_level_tokenizer

    model = InfiniLlamaForCausalLM(preset_config(preset, **overrides))
    model.init_weights(seed)
    model.set_gates(gate)
    model.save_pretrained(out_dir, tokenizer_json=byte_level_tokenizer().to_str(pretty=True))
    return model
