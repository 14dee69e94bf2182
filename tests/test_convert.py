"""`infini convert`: Hugging Face Llama-family and Beomi/InfiniTransformer checkpoints become
infini-llama model directories whose exported step graphs compute what transformers computes
(docs/convert.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from clirun import infini, one_line_error  # noqa: E402

from infini_onnx.export.exporter import export_model  # noqa: E402
from infini_onnx.model import from_pretrained  # noqa: E402
from infini_onnx.runtime import InfiniModel, Stream  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 40
TOKENS = 1000


def bpe_tokenizer(vocab_size: int = 300):
    """A real byte-pair tokenizer, trained here with the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def hf_checkpoint(
    path: Path, arch: str = "llama", seed: int = 0, tokenizer: bool = True, **config
) -> Path:
    """A randomly initialised transformers model saved as sharded safetensors (and the
    tokenizer.json of a BPE tokenizer whose vocabulary is the model's)."""
    bpe = bpe_tokenizer()
    sizes = dict(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        initializer_range=0.1,  # logits far from uniform: differences show
        bos_token_id=1,
        eos_token_id=2,
    )
    sizes.update(config)
    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }
    config_class, model_class = classes[arch]
    torch.manual_seed(seed)
    model = model_class(config_class(**sizes, attn_implementation="eager")).eval()
    model.save_pretrained(path, max_shard_size="40KB", safe_serialization=True)
    assert (path / "model.safetensors.index.json").exists()  # sharded
    if tokenizer:
        bpe.save(str(path / "tokenizer.json"))
    return path


def hf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def runtime_logits(model_dir: Path, tmp_path: Path, ids: np.ndarray) -> np.ndarray:
    onnx_path = export_model(model_dir, tmp_path / "model.onnx")
    stream = Stream(InfiniModel(onnx_path, threads=1))
    return np.concatenate(
        [stream.feed(ids[i : i + 300], all_logits=True) for i in range(0, len(ids), 300)]
    )


@pytest.mark.parametrize(
    "arch,config,window",
    [
        ("llama", dict(tie_word_embeddings=False, rope_theta=500000.0), 1024),  # GQA, untied
        ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4), 1024),  # MHA, tied
        ("mistral", dict(sliding_window=100, rope_theta=20000.0), None),  # W < the text
    ],
    ids=["llama-gqa-untied-theta", "llama-mha-tied", "mistral-window-100"],
)
def test_converted_graph_equals_transformers(tmp_path, arch, config, window):
    """Memory closed (gate -100), segments of 256: the exported step graph's logits over 1,000
    tokens equal transformers' forward within 1e-4, with W >= the text (Llama) and with W = 100
    (Mistral's own sliding window, which the conversion takes as W)."""
    src = hf_checkpoint(tmp_path / "hf", arch, **config)
    dst = tmp_path / "infini"
    args = ["convert", src, dst, "--segment-len", 256, "--gate-init", -100]
    result = infini(*args, *(["--local-window", window] if window else []))
    assert result.exit_code == 0, result.output
    converted = json.loads((dst / "config.json").read_text())
    assert converted["local_window"] == (window or config.get("sliding_window"))
    assert converted["tie_word_embeddings"] == config.get("tie_word_embeddings", False)
    assert (dst / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    ids = np.random.default_rng(0).integers(0, converted["vocab_size"], TOKENS)
    want = hf_logits(src, ids)
    got = runtime_logits(dst, tmp_path, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_converted_tokenizer_is_the_runtimes(tmp_path):
    """The runtime reads the copied tokenizer.json: text in, the BPE tokenizer's ids."""
    src = hf_checkpoint(tmp_path / "hf")
    assert infini("convert", src, tmp_path / "infini").exit_code == 0
    model = InfiniModel(export_model(tmp_path / "infini", tmp_path / "m.onnx"), threads=1)
    text = "the lazy dog jumps"
    assert model.tokenizer.encode(text).ids == bpe_tokenizer().encode(text).ids


def test_default_gate_starts_nearly_closed_and_learns(tmp_path):
    """Without --gate-init, every head's gate is -5: sigmoid 0.0067, and a loss through the
    memory moves it (its gradient is not ~0 as at -100)."""
    src = hf_checkpoint(tmp_path / "hf")
    assert infini("convert", src, tmp_path / "infini", "--segment-len", 16).exit_code == 0
    model = from_pretrained(tmp_path / "infini")
    gates = [layer.self_attn.gate for layer in model.model.layers]
    assert all(torch.equal(g, torch.full_like(g, -5.0)) for g in gates)
    model.train()
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 300, (1, 64)))
    logits, _ = model(ids)
    torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
    assert all(g.grad.abs().max() > 1e-6 for g in gates)


def test_beomi_checkpoint_keeps_its_gates_rule_and_segment_attention(tmp_path):
    """A Llama with Beomi/InfiniTransformer's gates [1, H, 1, 1]: the gates become [H] with
    their values, the rule is linear, attention stops at the segment start (no local_window),
    and the model computes Beomi's mix: sigmoid(gate) of the memory."""
    from safetensors.torch import load_file, save_file

    src = hf_checkpoint(tmp_path / "hf", num_key_value_heads=4)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = src / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(shard)
    gates = {i: torch.randn(1, 4, 1, 1) for i in range(2)}
    for i, g in gates.items():
        tensors[f"model.layers.{i}.self_attn.gate"] = g
        index["weight_map"][f"model.layers.{i}.self_attn.gate"] = shard.name
    save_file(tensors, shard, metadata={"format": "pt"})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    result = infini("convert", src, tmp_path / "infini", "--segment-len", 32)
    assert result.exit_code == 0, result.output
    assert "Beomi/InfiniTransformer" in result.output
    config = json.loads((tmp_path / "infini" / "config.json").read_text())
    assert config["memory_update"] == "linear" and "local_window" not in config
    model = from_pretrained(tmp_path / "infini")
    for i, g in gates.items():
        assert torch.equal(model.model.layers[i].self_attn.gate.data, g.reshape(4))


def test_beomi_grouped_heads_are_refused(tmp_path):
    """Beomi tiles the memory over query heads (h mod G) where its local attention groups
    them (h // r): with 1 < G < H no infini-llama computes both."""
    from safetensors.torch import save_file

    src = hf_checkpoint(tmp_path / "hf")  # G = 2, H = 4
    save_file({"model.layers.0.self_attn.gate": torch.zeros(1, 4, 1, 1)}, src / "gates.safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.gate"] = "gates.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(infini("convert", src, tmp_path / "out"), "h mod G")
    assert not (tmp_path / "out").exists()


def edit_config(src: Path, **changes) -> Path:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(architectures=["Qwen2ForCausalLM"]), "Qwen2ForCausalLM does not convert: its q/k/v"),
        (dict(architectures=["BertForMaskedLM"]), "BertForMaskedLM does not convert"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling 'llama3'"),
        (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_parameters 'yarn'"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
        (dict(attention_bias=True), "attention_bias true"),
        (dict(hidden_size="64"), "'hidden_size' must be int"),
        (dict(num_attention_heads=3), "num_attention_heads"),
        (dict(num_attention_heads=-4), "'num_attention_heads' must be >= 1"),
        (dict(num_hidden_layers=10**9), "sizes too large"),  # refused before any allocation
        (dict(architectures="LlamaForCausalLM"), "'architectures' must be a list"),
        (
            dict(rope_scaling={"rope_type": "default"}, rope_parameters={"rope_type": "linear"}),
            "rope_parameters 'linear'",
        ),  # fmt: skip
        (dict(architectures=["MistralForCausalLM"], sliding_window=32768), "--local-window"),
    ],
)
def test_unconvertible_configs_get_one_line_and_write_nothing(tmp_path, change, words):
    src = edit_config(hf_checkpoint(tmp_path / "hf"), **change)
    one_line_error(infini("convert", src, tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def test_hostile_directories_get_one_line_and_write_nothing(tmp_path):
    src = hf_checkpoint(tmp_path / "hf", tokenizer=False)
    out = tmp_path / "out"
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())

    # a missing tensor
    weight_map = dict(index["weight_map"])
    del weight_map["model.layers.1.mlp.up_proj.weight"]
    index_path.write_text(json.dumps({**index, "weight_map": weight_map}))
    one_line_error(
        infini("convert", src, out), "missing tensor 'model.layers.1.mlp.up_proj.weight'"
    )
    index_path.write_text(json.dumps(index))

    # a shape that does not fit the config
    edit_config(src, intermediate_size=96)
    one_line_error(infini("convert", src, out), "has shape [128, 64], expected [96, 64]")
    edit_config(src, intermediate_size=128)

    # a shard named outside the directory
    outside = dict(index["weight_map"], **{"model.norm.weight": "../elsewhere.safetensors"})
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    index_path.write_text(json.dumps({**index, "weight_map": outside}))
    one_line_error(infini("convert", src, out), "resolves outside the model directory")
    index_path.write_text(json.dumps(index))

    # a truncated shard
    shard = src / index["weight_map"]["model.norm.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    one_line_error(infini("convert", src, out), "truncated or corrupt safetensors")
    shard.write_bytes(data)

    # config.json that is not JSON
    config = (src / "config.json").read_text()
    (src / "config.json").write_text(config[:-5])
    one_line_error(infini("convert", src, out), "not valid JSON")
    (src / "config.json").write_text(config)
    assert not out.exists()

    # pickle-only checkpoints, with or without a config
    for name, with_config in (("pytorch_model.bin", True), ("consolidated.00.pth", False)):
        pickled = tmp_path / f"pickled-{name}"
        pickled.mkdir()
        if with_config:
            (pickled / "config.json").write_text(config)
        (pickled / name).write_bytes(b"\x80\x04")
        one_line_error(infini("convert", pickled, out), "pickle checkpoints are not read")

    # destinations: inside the source, under a file (nothing created on the way)
    one_line_error(infini("convert", src, src / "converted"), "inside the source directory")
    (tmp_path / "a-file").write_text("x")
    one_line_error(infini("convert", src, tmp_path / "a-file" / "sub"), "is not a directory")
    one_line_error(infini("convert", src, "."), "name a new directory")

    # a destination that is not empty
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(infini("convert", src, out), "not an empty directory")
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- nanotron's infini-attention layout -------------------------------------------------------


def halves_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of the converter's reordering: rotate_half rows -> interleaved pairs."""
    d = weight.shape[0] // heads
    return weight.reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(weight.shape)


def nanotron_checkpoint(path: Path, model_dir: Path, act: str = "orig_sigmoid", tp: str = "1"):
    """A nanotron checkpoint step directory of an infini-llama model's weights, written from
    nanotron's documented layout: fused qkv [q; k; v] with interleaved RoPE rows, fused
    gate_up [gate; up], balance_factors, a vocabulary padded to 64, one file per parameter."""
    from safetensors.torch import save_file

    from infini_onnx.config import InfiniConfig

    c = InfiniConfig.from_json_file(model_dir / "config.json")
    model = from_pretrained(model_dir)
    sd = model.state_dict()
    H, G, pad = c.num_attention_heads, c.num_key_value_heads, 64 - c.vocab_size % 64
    hf = dict(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_attention_heads=H,
        num_key_value_heads=G,
        num_hidden_layers=c.num_hidden_layers,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta,
        rope_interleaved=True,
        tie_word_embeddings=False,
        vocab_size=c.vocab_size,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        hidden_act="silu",
        is_llama_config=True,
    )
    path.mkdir(parents=True)
    (path / "model_config.json").write_text(json.dumps(hf))
    (path / "config.yaml").write_text(
        "general:\n  project: infini\ninfini_attention:\n  segment_length: 32\n"
        f"  balance_init_type: zeros\n  balance_act_type: {act}\n"
    )
    sharded = f"_pp-rank-0-of-1_tp-rank-0-of-{tp}"

    def put(name: str, tensor: torch.Tensor, suffix: str = sharded) -> None:
        *folders, last = name.split(".")
        folder = path.joinpath("model", *folders)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"data": tensor.contiguous()}, str(folder / f"model_{last}{suffix}.safetensors"))

    padded = lambda t: torch.cat([t, torch.zeros(pad, t.shape[1])])  # noqa: E731
    put(
        "model.token_position_embeddings.pp_block.token_embedding.weight",
        padded(sd["model.embed_tokens.weight"]),
    )
    put("model.final_layer_norm.pp_block.weight", sd["model.norm.weight"], "")
    put("model.lm_head.pp_block.weight", padded(sd["lm_head.weight"]))
    for i in range(c.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        q = halves_to_interleaved(sd[ours + "self_attn.q_proj.weight"], H)
        k = halves_to_interleaved(sd[ours + "self_attn.k_proj.weight"], G)
        put(
            theirs + "attn.qkv_proj.weight", torch.cat([q, k, sd[ours + "self_attn.v_proj.weight"]])
        )
        put(theirs + "attn.o_proj.weight", sd[ours + "self_attn.o_proj.weight"])
        put(theirs + "attn.balance_factors", sd[ours + "self_attn.gate"])
        gate_up = torch.cat([sd[ours + "mlp.gate_proj.weight"], sd[ours + "mlp.up_proj.weight"]])
        put(theirs + "mlp.gate_up_proj.weight", gate_up)
        put(theirs + "mlp.down_proj.weight", sd[ours + "mlp.down_proj.weight"])
        put(theirs + "input_layernorm.weight", sd[ours + "input_layernorm.weight"], "")
        put(
            theirs + "post_attention_layernorm.weight",
            sd[ours + "post_attention_layernorm.weight"],
            "",
        )
    return path


def test_interleaved_rope_rows_reorder_to_rotate_half():
    """RoPE on interleaved pairs (2i, 2i + 1) of q = W x equals rotate_half RoPE on pairs
    (i, i + d/2) of q' = W' x, row for row after the same reordering: scores are unchanged."""
    from infini_onnx.convert.nanotron import interleaved_to_halves
    from infini_onnx.model.modeling import rope_cos_sin, rotate

    heads, d, D = 2, 8, 5
    W, x = torch.randn(heads * d, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.tensor([0, 7, 1000]), d, 10000.0, torch.float64)  # [3, d/2]
    q = (x @ W.T).view(3, heads, d)
    pairs = q.view(3, heads, d // 2, 2)
    c, s = cos[:, None], sin[:, None]
    interleaved = torch.stack(
        [pairs[..., 0] * c - pairs[..., 1] * s, pairs[..., 1] * c + pairs[..., 0] * s], -1
    ).view(3, heads, d)
    halves = rotate(
        (x @ interleaved_to_halves(W, heads).T).view(3, heads, d).transpose(0, 1), cos, sin
    )
    reorder = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    assert torch.allclose(halves.transpose(0, 1), interleaved[..., reorder], atol=1e-12)


def test_nanotron_checkpoint_converts_to_the_same_model(tmp_path, model_dir_factory):
    """nanotron's layout of a model converts back to it: every tensor equal (the vocabulary
    unpadded, q/k rows back in rotate_half order), balance_factors as the gates, the delta
    rule, nanotron's segment_length and attention within the segment."""
    from safetensors.torch import load_file

    model = from_pretrained(model_dir_factory("delta", True))
    for layer in model.model.layers:  # gates of their own, not the zeros of a new model
        layer.self_attn.gate.data = torch.randn(4)
    model_dir = tmp_path / "original"
    model.save_pretrained(model_dir)
    src = nanotron_checkpoint(tmp_path / "step", model_dir)
    result = infini("convert", src, tmp_path / "infini")
    assert result.exit_code == 0, result.output
    assert "nanotron infini-attention" in result.output
    config = json.loads((tmp_path / "infini" / "config.json").read_text())
    assert config["memory_update"] == "delta" and config["segment_len"] == 32
    assert "local_window" not in config
    got = load_file(tmp_path / "infini" / "model.safetensors")
    want = load_file(model_dir / "model.safetensors")
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize(
    "act,tp,words",
    [
        ("orig_tanh", "1", "balance_act_type 'orig_tanh' does not convert"),
        ("orig_sigmoid", "2", "merge the checkpoint to one tensor-parallel rank"),
        ("orig_sigmoid\n  turn_on_memory: false", "1", "turn_on_memory is not true"),
    ],
)
def test_nanotron_refusals(tmp_path, model_dir_factory, act, tp, words):
    src = nanotron_checkpoint(tmp_path / "step", model_dir_factory("delta", True), act, tp)
    one_line_error(infini("convert", src, tmp_path / "out"), words)
    assert not (tmp_path / "out").exists()


def test_lucidrains_state_dict_is_refused_with_the_differences(tmp_path):
    """infini-transformer-pytorch's blocks are not Llama's: one line that says how, nothing
    written (docs/convert.md lists every difference)."""
    lucidrains = pytest.importorskip("infini_transformer_pytorch")
    from safetensors.torch import save_file

    model = lucidrains.InfiniTransformer(num_tokens=256, dim=64, depth=2, dim_head=16, heads=4)
    src = tmp_path / "lucidrains"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, src / "model.safetensors")
    one_line_error(infini("convert", src, tmp_path / "out"), "GEGLU with biases")
    assert not (tmp_path / "out").exists()
