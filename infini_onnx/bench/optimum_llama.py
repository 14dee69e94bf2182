"""The full-attention baseline as users run it: the reference weights as a Hugging Face
`LlamaForCausalLM` (the memory gates dropped), exported by optimum (`main_export`, task
text-generation-with-past) and run by optimum's `ORTModelForCausalLM` with its KV cache.

Needs the `[bench]` extra (optimum-onnx, transformers). Nothing is downloaded: the Llama is
built from the local model directory.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from infini_onnx.model import InfiniLlamaForCausalLM

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def hf_llama(model: InfiniLlamaForCausalLM) -> LlamaForCausalLM:
    """A transformers LlamaForCausalLM with the same weights (positions from the stream start,
    no memory): the model a user without infini-attention would run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        max_position_embeddings=2**21,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
    )
    llama = LlamaForCausalLM(config)
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith(".self_attn.gate")}
    missing, unexpected = llama.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"Llama weights do not match: {missing + unexpected}")
    return llama.eval()


def export_optimum(model: InfiniLlamaForCausalLM, out_dir: Path) -> Path:
    """optimum's ONNX export of `hf_llama(model)` into out_dir (model.onnx, config.json, ...),
    renamed into place only when complete."""
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    scratch = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    hf_llama(model).save_pretrained(scratch / "hf")
    hf_logging.set_verbosity_error()  # the tracer's warnings and deprecation notes
    logging.getLogger("optimum").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(scratch / "hf"), str(scratch / "onnx"), task="text-generation-with-past")
    (scratch / "onnx").rename(out_dir)
    shutil.rmtree(scratch)
    return out_dir
