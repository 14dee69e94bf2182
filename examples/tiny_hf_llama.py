"""A tiny Hugging Face Llama (random weights, 1.05M parameters) with a byte-pair tokenizer
trained on TEXT: a stand-in for a real checkpoint, to try `infini convert` and `infini train`
without a download (benchmarks/results/convert-train/README.md).

    python examples/tiny_hf_llama.py TEXT OUT_DIR
"""

from __future__ import annotations

import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def main(text: str, out_dir: str) -> None:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([text], trainer)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save(f"{out_dir}/tokenizer.json")


if __name__ == "__main__":
    main(*sys.argv[1:3])
