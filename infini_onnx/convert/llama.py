"""Hugging Face Llama-family directories (and Beomi/InfiniTransformer's, which are Llama
directories with a gate per head) -> infini-llama (docs/convert.md).

The weights keep their names: infini-llama uses Hugging Face Llama's. What a Llama lacks is the
gate of each query head, which starts at `gate_init` (the memory nearly closed); what it has and
infini-llama does not (biases, scaled RoPE, other activations) is refused by name.
"""

from __future__ import annotations

from typing import Any

import torch

from infini_onnx.config import coerce
from infini_onnx.errors import ModelDirError

# Architectures whose blocks are Llama's: RMSNorm, RoPE (rotate_half), SwiGLU, no biases.
# Mistral adds a sliding window, which becomes the local window.
MAPPED = ("LlamaForCausalLM", "MistralForCausalLM")
MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# Close relatives that do not map, and why (the refusal says it).
REFUSED = {
    "Qwen2ForCausalLM": "its q/k/v projections have biases, which infini-llama has not",
    "Qwen3ForCausalLM": "it normalises q and k per head (q_norm, k_norm); infini-llama does not",
    "GemmaForCausalLM": "it scales embeddings by sqrt(hidden_size), its RMSNorm multiplies by "
    "(1 + weight) and its MLP is GeGLU",
    "Gemma2ForCausalLM": "it soft-caps logits, alternates local and global layers and its MLP "
    "is GeGLU",
    "MixtralForCausalLM": "its feed-forward is a mixture of experts",
    "Phi3ForCausalLM": "its qkv and gate/up projections are fused and it may use partial or "
    "scaled RoPE",
}
# Tensors a Llama checkpoint may carry that hold no weights (old transformers saved RoPE's
# inverse frequencies as a buffer): dropped.
DROPPED_SUFFIXES = ("self_attn.rotary_emb.inv_freq",)


def architecture(hf: dict[str, Any], source: str) -> str:
    """The checkpoint's architecture name, if it is one that maps (ModelDirError otherwise)."""
    names = hf.get("architectures")
    if names is not None and not (isinstance(names, list) and names and isinstance(names[0], str)):
        raise ModelDirError(f"{source}: 'architectures' must be a list of names, got {names!r}")
    if names:
        name = names[0]
    elif isinstance(hf.get("model_type"), str):
        name = MODEL_TYPES.get(hf["model_type"], hf["model_type"])
    else:
        raise ModelDirError(f"{source}: no 'architectures' or 'model_type' key")
    if name in MAPPED:
        return name
    why = REFUSED.get(name, "not a Llama-family architecture")
    raise ModelDirError(
        f"{source}: {name} does not convert: {why} (convertible: {', '.join(MAPPED)})"
    )


def _get(hf: dict[str, Any], key: str, kind: str, source: str, default: Any = None) -> Any:
    """hf[key] (or the default) checked as the type named `kind` (config.coerce)."""
    if key not in hf and default is None:
        raise ModelDirError(f"{source}: missing required key {key!r}")
    return coerce(hf.get(key, default), kind, key, source)


def _token_id(hf: dict[str, Any], key: str, default: int, source: str) -> int:
    """bos/eos: an integer, the first of a list (Llama 3 lists several eos ids), or absent."""
    value = hf.get(key)
    if value is None:
        return default
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelDirError(f"{source}: key {key!r} must be a token id, got {hf.get(key)!r}")
    return value


def rope_kind(rope: object) -> object:
    """The RoPE type of a rope_scaling / rope_parameters value ("default" when absent); a
    per-layer-type dict of them (transformers 5) is "default" only if all are."""
    if rope is None or rope is False or rope == {}:
        return "default"
    if not isinstance(rope, dict):
        return rope
    if all(isinstance(v, dict) for v in rope.values()):
        kinds = [rope_kind(v) for v in rope.values()]
        return next((k for k in kinds if k != "default"), "default")
    return rope.get("rope_type", rope.get("type", "default"))


def _rope_theta(rope: object) -> object:
    """rope_theta from transformers 5's rope_parameters, else Llama's default."""
    return rope.get("rope_theta", 10000.0) if isinstance(rope, dict) else 10000.0


def config_keys(hf: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """infini-llama's config keys from a Hugging Face config.json (defaults as transformers'
    LlamaConfig has them), after refusing what does not map."""
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):  # transformers' two names of x * sigmoid(x)
        raise ModelDirError(f"{source}: hidden_act {act!r} does not convert (SwiGLU needs 'silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ModelDirError(
                f"{source}: {key} true does not convert (infini-llama has no biases)"
            )
    # transformers 4 writes rope_theta and rope_scaling; 5 writes rope_parameters (both)
    rope = hf.get("rope_parameters")
    for key in ("rope_scaling", "rope_parameters"):
        kind = rope_kind(hf.get(key))
        if kind != "default":
            raise ModelDirError(
                f"{source}: {key} {kind!r} does not convert (infini-llama has plain RoPE; its "
                "window keeps positions small, so no scaling is needed for long streams)"
            )
    heads = _get(hf, "num_attention_heads", "int", source)
    hidden = _get(hf, "hidden_size", "int", source)
    head_dim = hf.get("head_dim") or (hidden // heads if heads > 0 else 0)
    keys = {
        "vocab_size": _get(hf, "vocab_size", "int", source),
        "hidden_size": hidden,
        "intermediate_size": _get(hf, "intermediate_size", "int", source),
        "num_hidden_layers": _get(hf, "num_hidden_layers", "int", source),
        "num_attention_heads": heads,
        "num_key_value_heads": _get(hf, "num_key_value_heads", "int", source, heads),
        "head_dim": head_dim,
        "rms_norm_eps": _get(hf, "rms_norm_eps", "float", source, 1e-6),
        "rope_theta": _get(hf, "rope_theta", "float", source, _rope_theta(rope)),
        "tie_word_embeddings": _get(hf, "tie_word_embeddings", "bool", source, False),
        "bos_token_id": _token_id(hf, "bos_token_id", 1, source),
        "eos_token_id": _token_id(hf, "eos_token_id", 2, source),
    }
    window = hf.get("sliding_window") if name == "MistralForCausalLM" else None
    if window is not None:
        keys["local_window"] = _get(hf, "sliding_window", "int", source)
    return keys


def beomi_gates(tensors: dict[str, torch.Tensor], heads: int, kv_heads: int, source: str) -> bool:
    """Reshape Beomi/InfiniTransformer's gates [1, H, 1, 1] to infini-llama's [H] in place;
    True if the checkpoint has them. Its mix is infini-llama's (sigmoid(gate) weights the
    memory), but its memory read tiles the key/value heads (query head h reads memory h mod G)
    where infini-llama groups them (h // r): the same only for G = H or G = 1."""
    names = [k for k in tensors if k.endswith(".self_attn.gate")]
    if not names:
        return False
    if 1 < kv_heads < heads:
        raise ModelDirError(
            f"{source}: a Beomi/InfiniTransformer checkpoint with grouped key/value heads "
            f"({heads} query, {kv_heads} key/value) does not convert exactly: its memory read "
            "pairs query head h with memory h mod G, its local attention with h // r"
        )
    for name in names:
        gate = tensors[name]
        if gate.numel() != heads:
            raise ModelDirError(
                f"{source}: tensor {name!r} has shape {list(gate.shape)}, "
                f"expected [1, {heads}, 1, 1]"
            )
        tensors[name] = gate.reshape(heads).float()  # gates stay float32, as new ones are
    return True


def tensors_for(
    tensors: dict[str, torch.Tensor], num_layers: int, heads: int, gate_init: float
) -> dict[str, torch.Tensor]:
    """The infini-llama tensors of a Llama checkpoint's: its own (buffers dropped) plus a gate
    per layer at gate_init where the checkpoint has none."""
    out = {k: v for k, v in tensors.items() if not k.endswith(DROPPED_SUFFIXES)}
    for i in range(num_layers):
        name = f"model.layers.{i}.self_attn.gate"
        if name not in out:
            out[name] = torch.full((heads,), gate_init, dtype=torch.float32)
    return out
