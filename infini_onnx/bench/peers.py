"""The peers of `infini bench --decode`, built from the same weights as the model directory
(full attention, the memory gates dropped, positions from the stream start):

- onnxruntime-genai: its model builder (`python -m onnxruntime_genai.models.builder`) run on a
  Hugging Face Llama directory of the weights, fp32 and int4;
- llama.cpp (llama-cpp-python): a GGUF written here with the `gguf` package, Q8_0 and Q4_0.

Each needs its package (the `[peers]` extra); a peer whose package is missing is skipped with a
note. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from infini_onnx.model import InfiniLlamaForCausalLM

GENAI_PRECISIONS = {"fp32": "fp32", "int4": "int4"}  # our variant -> the builder's -p
GGUF_TYPES = {"int8": "Q8_0", "int4": "Q4_0"}  # our variant -> llama.cpp's type of the same bits
INSTALL = {
    "onnxruntime_genai": "pip install 'onnxruntime-genai==0.11.4' (a 49 MB wheel; 0.18 needs "
    "transformers 5)",
    "llama_cpp": "pip install llama-cpp-python gguf (compiles llama.cpp: about 35 minutes on "
    "2 cores)",
}


def missing_note(module: str) -> str | None:
    """None when `module` imports, else how to install it."""
    return None if find_spec(module) else f"{module} is not installed: {INSTALL[module]}"


def hf_directory(model: InfiniLlamaForCausalLM, model_dir: Path, out: Path) -> Path:
    """A Hugging Face Llama directory of the weights, with the model's tokenizer (the GenAI
    builder saves one with its graph)."""
    from infini_onnx.bench.optimum_llama import hf_llama

    hf_llama(model).save_pretrained(out)
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
    )
    return out


def build_genai(hf_dir: Path, out: Path, precision: str) -> Path:
    """The GenAI builder's graph of `hf_dir` for the CPU (`-e cpu`; int4: MatMulNBits with
    accuracy_level 4, block 32, its defaults), renamed into place when complete."""
    scratch = out.with_name(out.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(scratch),
        "-p",
        GENAI_PRECISIONS[precision],
        "-e",
        "cpu",
        "-c",
        str(scratch.with_name(scratch.name + ".cache")),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    shutil.rmtree(scratch.with_name(scratch.name + ".cache"), ignore_errors=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"onnxruntime-genai's builder failed: {tail}")
    scratch.rename(out)
    return out


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate_half q/k rows -> llama.cpp's interleaved pairs (as its converter)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(model: InfiniLlamaForCausalLM, out: Path, kind: str) -> Path:
    """A llama-architecture GGUF of the weights: 2-D weights in `GGUF_TYPES[kind]`, norms
    float32; the byte-level vocabulary as byte tokens plus bos and eos."""
    import gguf

    c = model.config
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[kind])
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_context_length(2**21)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("llama")
    tokens = [f"<0x{i:02X}>".encode() for i in range(256)] + [b"<s>", b"</s>"]
    tokens += [f"<unused{i}>".encode() for i in range(c.vocab_size - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    byte, control = gguf.TokenType.BYTE, gguf.TokenType.CONTROL
    w.add_token_types([byte] * 256 + [control] * (len(tokens) - 256))
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)

    state = {k: v.float().numpy() for k, v in model.state_dict().items()}

    def add(name: str, array: np.ndarray) -> None:
        if array.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array.astype(np.float32))

    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    add("output.weight", state.get("lm_head.weight", state["model.embed_tokens.weight"]))
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", state[p + "input_layernorm.weight"])
        add(
            f"blk.{i}.attn_q.weight",
            _permute(state[p + "self_attn.q_proj.weight"], c.num_attention_heads),
        )
        add(
            f"blk.{i}.attn_k.weight",
            _permute(state[p + "self_attn.k_proj.weight"], c.num_key_value_heads),
        )
        add(f"blk.{i}.attn_v.weight", state[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", state[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", state[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", state[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", state[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", state[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    return out
