"""The reference model against an independent float64 numpy implementation of its math
(docs/design.md), the runtime loop, gradients through the memory, and model directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infini_onnx.errors import ModelDirError
from infini_onnx.model import InfiniLlamaForCausalLM, from_pretrained, save_pretrained
from infini_onnx.modeldir import load_config

# --- An independent float64 numpy implementation of the model (docs/design.md) ------------


def np_rmsnorm(x, w, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


def np_sigma(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0)))  # elu(x) + 1


def np_rope(x, positions, theta):
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2) / d)
    angles = positions[:, None] * inv_freq[None, :]  # [T, d/2]
    cos = np.cos(np.concatenate([angles, angles], -1))
    sin = np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def np_infini_llama(weights: dict[str, np.ndarray], cfg: dict, ids: np.ndarray) -> np.ndarray:
    """Logits [S, V] for one sequence, segment by segment, one head at a time. Local attention:
    the token at stream position t sees positions max(0, t - W + 1) .. t with W = local_window,
    or the current segment's positions up to t without one; RoPE at absolute positions."""
    H, G, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    N, L, eps = cfg["segment_len"], cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    W = cfg.get("local_window")
    M = np.zeros((L, G, d, d))
    z = np.zeros((L, G, d))
    keys = np.zeros((L, 0, G, d))  # every earlier token's k and v (before RoPE), per layer
    values = np.zeros((L, 0, G, d))
    out = []
    for s0 in range(0, len(ids), N):
        x = weights["model.embed_tokens.weight"][ids[s0 : s0 + N]]  # [T, D]
        T = len(x)
        t = np.arange(s0, s0 + T)  # the segment's stream positions
        all_pos = np.arange(s0 + T)
        first = np.maximum(0, t - W + 1) if W is not None else np.full(T, s0)
        visible = (all_pos[None, :] >= first[:, None]) & (all_pos[None, :] <= t[:, None])
        new_keys, new_values = [], []
        for i in range(L):
            p = f"model.layers.{i}."
            h = np_rmsnorm(x, weights[p + "input_layernorm.weight"], eps)
            q = (h @ weights[p + "self_attn.q_proj.weight"].T).reshape(T, H, d)
            k = (h @ weights[p + "self_attn.k_proj.weight"].T).reshape(T, G, d)
            v = (h @ weights[p + "self_attn.v_proj.weight"].T).reshape(T, G, d)
            k_all, v_all = np.concatenate([keys[i], k]), np.concatenate([values[i], v])
            new_keys.append(k_all)
            new_values.append(v_all)
            heads = []
            for hh in range(H):
                g = hh // (H // G)
                qr = np_rope(q[:, hh], t, cfg["rope_theta"])
                kr = np_rope(k_all[:, g], all_pos, cfg["rope_theta"])
                scores = np.where(visible, qr @ kr.T / np.sqrt(d), -np.inf)
                w = np.exp(scores - scores.max(-1, keepdims=True))
                a_dot = (w / w.sum(-1, keepdims=True)) @ v_all[:, g]
                sq = np_sigma(q[:, hh])
                a_mem = (sq @ M[i, g]) / np.maximum(sq @ z[i, g], 1e-6)[:, None]
                beta = 1 / (1 + np.exp(-weights[p + "self_attn.gate"][hh]))
                heads.append(beta * a_mem + (1 - beta) * a_dot)
            for g in range(G):
                sk = np_sigma(k[:, g])
                vv = v[:, g]
                if cfg["memory_update"] == "delta":
                    vv = vv - (sk @ M[i, g]) / np.maximum(sk @ z[i, g], 1e-6)[:, None]
                M[i, g] = M[i, g] + sk.T @ vv
                z[i, g] = z[i, g] + sk.sum(0)
            x = x + np.concatenate(heads, -1) @ weights[p + "self_attn.o_proj.weight"].T
            h = np_rmsnorm(x, weights[p + "post_attention_layernorm.weight"], eps)
            gate = h @ weights[p + "mlp.gate_proj.weight"].T
            up = h @ weights[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ weights[p + "mlp.down_proj.weight"].T
        keys, values = np.stack(new_keys), np.stack(new_values)
        x = np_rmsnorm(x, weights["model.norm.weight"], eps)
        head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
        out.append(x @ head.T)
    return np.concatenate(out)


def _model(model_dir_factory, memory_update, gqa, gate_scale=1.0):
    model = from_pretrained(model_dir_factory(memory_update, gqa))
    with torch.no_grad():  # spread the gates so that both paths weigh in, per head
        for layer in model.model.layers:
            layer.self_attn.gate.copy_(torch.linspace(-2, 2, layer.self_attn.gate.numel()))
            layer.self_attn.gate.mul_(gate_scale)
    return model


@pytest.mark.parametrize("memory_update", ["linear", "delta"])
@pytest.mark.parametrize("gqa", [True, False], ids=["gqa", "mha"])
def test_matches_numpy_float64_reference(model_dir_factory, memory_update, gqa):
    model = _model(model_dir_factory, memory_update, gqa)
    N = model.config.segment_len
    S = 5 * N + N // 2 + 3  # 5 whole segments, then a partial one
    ids = torch.randint(
        0, model.config.vocab_size, (2, S), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        logits, _ = model(ids)
    weights = {k: v.double().numpy() for k, v in model.state_dict().items()}
    cfg = model.config.to_dict()
    for b in range(2):
        expected = np_infini_llama(weights, cfg, ids[b].numpy())
        assert np.abs(logits[b].numpy() - expected).max() <= 1e-4
    # The memory matters: the second segment read on its own (empty memory) gives other logits,
    # by far more than the tolerance above.
    with torch.no_grad():
        alone, _ = model(ids[:, N : 2 * N])
    assert (logits[:, N : 2 * N] - alone).abs().max() > 100 * 1e-4


@pytest.mark.parametrize(
    "window", [None, 1, 7, 32, 45], ids=["segment", "W=1", "W<N", "W=N", "W>N"]
)
def test_window_matches_float64_reference_from_every_offset(model_dir_factory, window):
    """The float64 model against the numpy reference over 5 segments and a half, fed as a first
    piece of o tokens then the rest, for every offset o of a segment (N = 32)."""
    model = from_pretrained(model_dir_factory("delta", True, local_window=window)).double()
    with torch.no_grad():  # both paths weigh in
        for layer in model.model.layers:
            layer.self_attn.gate.copy_(torch.linspace(-2, 2, layer.self_attn.gate.numel()))
    N = model.config.segment_len
    ids = torch.randint(0, 258, (1, 5 * N + N // 2), generator=torch.Generator().manual_seed(5))
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    expected = np_infini_llama(weights, model.config.to_dict(), ids[0].numpy())
    with torch.no_grad():
        for offset in range(N):
            first, state = model(ids[:, :offset]) if offset else (None, None)
            rest, _ = model(ids[:, offset:], state)
            got = torch.cat([first, rest], 1) if offset else rest
            assert np.abs(got[0].numpy() - expected).max() <= 1e-5, offset


def _step_loop(model, ids):
    """Token by token with the runtime loop of docs/design.md, calling `step` directly: the new
    key and value go to ring slot position mod K, the memory commits at each segment's end."""
    N = model.config.segment_len
    s = model.new_state(ids.shape[0])
    memory, norm, memory_acc, norm_acc = s.memory, s.norm, s.memory_acc, s.norm_acc
    key, value, K = s.past_key.clone(), s.past_value.clone(), s.past_key.shape[3]
    logits = []
    for t in range(ids.shape[1]):
        position = torch.full((ids.shape[0],), t)
        out, new_key, new_value, memory_acc, norm_acc = model.step(
            ids[:, t : t + 1], key, value, memory, norm, memory_acc, norm_acc, position, 1
        )
        logits.append(out)
        key[:, :, :, t % K], value[:, :, :, t % K] = new_key[:, :, :, 0], new_value[:, :, :, 0]
        if (t + 1) % N == 0:
            memory, norm = memory_acc, norm_acc
    return torch.cat(logits, 1), (memory, norm, memory_acc, norm_acc, key, value)


@pytest.mark.parametrize("memory_update", ["linear", "delta"])
def test_token_by_token_step_loop_matches_forward(model_dir_factory, memory_update):
    model = _model(model_dir_factory, memory_update, gqa=True)
    N = model.config.segment_len
    ids = torch.randint(
        0, model.config.vocab_size, (2, 3 * N + 7), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        expected_logits, state = model(ids)
        logits, final = _step_loop(model, ids)
    assert (logits - expected_logits).abs().max() <= 1e-5
    expected_final = (
        state.memory,
        state.norm,
        state.memory_acc,
        state.norm_acc,
        state.past_key,
        state.past_value,
    )
    for got, want in zip(final, expected_final):
        assert got.shape == want.shape
        scale = want.abs().max().clamp(min=1)
        assert (got - want).abs().max() / scale <= 1e-5
    assert state.cached == 7 and state.tokens_seen == 3 * N + 7
    assert final[0].abs().max() > 0  # three segments were written to memory


def test_forward_continues_a_stream_from_any_split(model_dir_factory):
    model = _model(model_dir_factory, "delta", gqa=True)
    N = model.config.segment_len
    ids = torch.randint(
        0, model.config.vocab_size, (1, 4 * N), generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        whole, _ = model(ids)
        first, state = model(ids[:, : N + 5])
        rest, _ = model(ids[:, N + 5 :], state)
        last, _ = model(ids, last_logits_only=True)
    assert (torch.cat([first, rest], 1) - whole).abs().max() <= 1e-5
    assert last.shape == (1, 1, whole.shape[2])
    assert (last[:, 0] - whole[:, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("cut", [False, True], ids=["through-memory", "memory-cut"])
def test_gradient_reaches_layer0_through_memory(model_dir_factory, cut):
    """A loss on segment 4 reaches the layer-0 weights *as used in segments 1-3* only via M, z
    and the window (the last W - 1 tokens' keys and values)."""
    model = _model(model_dir_factory, "delta", gqa=True)
    N = model.config.segment_len
    ids = torch.randint(
        0, model.config.vocab_size, (2, 4 * N), generator=torch.Generator().manual_seed(4)
    )
    early = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    late = {k: v.detach() for k, v in model.named_parameters()}
    _, state = torch.func.functional_call(model, early, (ids[:, : 3 * N],))
    assert state.cached == 0
    if cut:
        state.memory, state.norm = state.memory.detach(), state.norm.detach()
        state.memory_acc, state.norm_acc = state.memory_acc.detach(), state.norm_acc.detach()
        state.past_key, state.past_value = state.past_key.detach(), state.past_value.detach()
    logits, _ = torch.func.functional_call(model, late, (ids[:, 3 * N :], state))
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), ids[:, 3 * N + 1 :].flatten()
    )
    if cut:  # nothing links segments 1-3 to the loss any more
        assert not loss.requires_grad
        return
    layer0 = [
        f"model.layers.0.self_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    grads = torch.autograd.grad(loss, [early[n] for n in layer0], allow_unused=True)
    for name, grad in zip(layer0, grads):
        assert grad is not None and grad.abs().max() > 0, name


# --- Model directories ---------------------------------------------------------------------


def test_save_load_round_trip_single_sharded_and_tied(model_dir_factory, tmp_path):
    model = _model(model_dir_factory, "linear", gqa=False)
    ids = torch.randint(0, 258, (1, 50), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, _ = model(ids)
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=50_000)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    with torch.no_grad():
        got, _ = from_pretrained(tmp_path / "sharded")(ids)
    assert torch.equal(got, expected)

    tied_cfg = model.config.to_dict() | {"tie_word_embeddings": True}
    from infini_onnx.config import InfiniConfig

    tied = InfiniLlamaForCausalLM(InfiniConfig.from_dict(tied_cfg))
    tied.init_weights(seed=7)
    save_pretrained(tied, tmp_path / "tied")
    loaded = from_pretrained(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], tied(ids)[0])


def test_unknown_config_keys_are_kept(model_dir_factory, tmp_path):
    src = model_dir_factory()
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["InfiniLlamaForCausalLM"], torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    config = load_config(tmp_path)
    assert config.to_dict()["architectures"] == ["InfiniLlamaForCausalLM"]


def _copy_dir(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _bad_dirs():
    """(name, how to break a good directory, the words the one-line error must contain)."""

    def truncate(p):
        data = (p / "model.safetensors").read_bytes()
        (p / "model.safetensors").write_bytes(data[: len(data) // 2])

    def wrong_shape(p):
        from safetensors.torch import load_file, save_file

        t = load_file(p / "model.safetensors")
        t["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
        save_file(t, p / "model.safetensors")

    def drop_tensor(p):
        from safetensors.torch import load_file, save_file

        t = load_file(p / "model.safetensors")
        del t["model.layers.0.self_attn.gate"]
        save_file(t, p / "model.safetensors")

    def extra_tensor(p):
        from safetensors.torch import load_file, save_file

        t = load_file(p / "model.safetensors")
        t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
        save_file(t, p / "model.safetensors")

    return [
        ("no-config", lambda p: (p / "config.json").unlink(), ["config.json", "missing"]),
        (
            "no-weights",
            lambda p: (p / "model.safetensors").unlink(),
            ["model.safetensors", "missing"],
        ),
        (
            "pickle-only",
            lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"),
            ["missing model.safetensors"],
        ),
        ("truncated", truncate, ["model.safetensors", "truncated or corrupt"]),
        (
            "wrong-shape",
            wrong_shape,
            ["'model.layers.1.mlp.up_proj.weight'", "[3, 3]", "expected [128, 64]"],
        ),
        ("missing-tensor", drop_tensor, ["missing tensor 'model.layers.0.self_attn.gate'"]),
        (
            "extra-tensor",
            extra_tensor,
            ["unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"],
        ),
        (
            "bad-json",
            lambda p: (p / "config.json").write_text("{not json"),
            ["config.json", "not valid JSON"],
        ),
        (
            "model-type",
            lambda p: _edit_config(p, model_type="llama"),
            ["config.json", "unknown model_type 'llama'"],
        ),
        (
            "missing-key",
            lambda p: _edit_config(p, segment_len=None),
            ["config.json", "missing required key 'segment_len'"],
        ),
        (
            "segment-len",
            lambda p: _edit_config(p, segment_len=0),
            ["config.json", "'segment_len' must be >= 1"],
        ),
        (
            "gqa-ratio",
            lambda p: _edit_config(p, num_key_value_heads=3),
            ["config.json", "'num_attention_heads' (4)", "multiple"],
        ),
        (
            "memory-rule",
            lambda p: _edit_config(p, memory_update="gated"),
            ["config.json", "'memory_update'", "'gated'"],
        ),
        (
            "wrong-type",
            lambda p: _edit_config(p, hidden_size="64"),
            ["config.json", "'hidden_size' must be int"],
        ),
    ]


@pytest.mark.parametrize("name,breaks,words", _bad_dirs(), ids=[b[0] for b in _bad_dirs()])
def test_bad_model_directory_gives_one_line_error(model_dir_factory, tmp_path, name, breaks, words):
    bad = _copy_dir(model_dir_factory(), tmp_path / name)
    breaks(bad)
    with pytest.raises(ModelDirError) as info:
        from_pretrained(bad)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_sharded_index_naming_a_missing_shard(model_dir_factory, tmp_path):
    model = from_pretrained(model_dir_factory())
    save_pretrained(model, tmp_path / "m", max_shard_bytes=50_000)
    next((tmp_path / "m").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelDirError, match=r"model-00002-of-\d+\.safetensors: missing shard"):
        from_pretrained(tmp_path / "m")


def test_cli_init_then_load_and_one_line_error(tmp_path):
    from click.testing import CliRunner

    from infini_onnx.cli import main

    result = CliRunner().invoke(
        main, ["init", str(tmp_path / "m"), "--preset", "tiny", "--memory-update", "linear"]
    )
    assert result.exit_code == 0, result.output
    model = from_pretrained(tmp_path / "m")
    assert model.config.memory_update == "linear"
    assert (tmp_path / "m" / "tokenizer.json").is_file()

    _edit_config(tmp_path / "m", num_key_value_heads=3)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "m"), str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: ") and "multiple" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_presets_small_has_10m_parameters_and_head_dim_64():
    from infini_onnx.config import preset_config

    config = preset_config("small")
    with torch.device("meta"):
        n = sum(p.numel() for p in InfiniLlamaForCausalLM(config).parameters())
    assert n >= 10_000_000 and config.head_dim >= 64


def test_byte_level_tokenizer_ids_are_bytes():
    from infini_onnx.tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer()
    text = "The pass key is 12345. Grüße\n"
    assert tok.encode(text).ids == list(text.encode())
    assert tok.decode(list(text.encode())) == text
    assert (tok.token_to_id("<s>"), tok.token_to_id("</s>"), tok.get_vocab_size()) == (
        256,
        257,
        258,
    )


def test_config_and_cli_import_without_torch(tmp_path):
    """The config (and the `infini` group) must load on an edge device that has no torch."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        heavy = ('torch', 'onnx', 'onnxscript', 'onnx_ir', 'safetensors')\n"
        "        if name.split('.')[0] in heavy:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from infini_onnx.config import InfiniConfig\n"
        f"print(InfiniConfig.from_json_file({str(tmp_path / 'config.json')!r}).segment_len)\n"
        "import infini_onnx.cli\n"
    )
    from infini_onnx.config import preset_config

    (tmp_path / "config.json").write_text(preset_config("tiny").to_json())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "32"


def test_init_weights_is_seeded_with_unit_norms_and_even_gates(model_dir_factory):
    model = from_pretrained(model_dir_factory())
    model.init_weights()
    first = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)  # the global generator must not matter
    model.init_weights(0)
    again = model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    model.init_weights(1)
    assert not torch.equal(first["lm_head.weight"], model.state_dict()["lm_head.weight"])
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1.0), name
        elif name.endswith("self_attn.gate"):
            assert torch.all(p == 0.0), name
        else:
            assert 0.015 < p.std().item() < 0.025, name


def test_pytorch_runs_each_projection_on_its_own(model_dir_factory):
    """Eager PyTorch calls q/k/v and gate/up one by one (stacking their weights, as the exported
    graph does, would copy them at every call and slow the reference down)."""
    model = from_pretrained(model_dir_factory())
    calls = []
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert len(calls) == 5 * model.config.num_hidden_layers


def test_attention_over_parts_is_one_softmax_over_all_keys():
    """`attend` over the ring and the new keys, never joined, equals a float64 softmax over
    their concatenation; a part a query cannot see at all (every key masked, as the ring at a
    stream's start) adds nothing and no NaN."""
    from infini_onnx.config import preset_config

    attn = InfiniLlamaForCausalLM(preset_config("tiny")).model.layers[0].self_attn
    c = attn.config
    B, H, G, T, K, d = 2, c.num_attention_heads, c.num_key_value_heads, 3, 5, c.head_dim
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, d, generator=g)
    keys = [torch.randn(B, G, n, d, generator=g) for n in (K, T)]
    values = [torch.randn(B, G, n, d, generator=g) for n in (K, T)]
    visible = [torch.rand(B, T, n, generator=g) > 0.4 for n in (K, T)]
    visible[0][1] = False  # row 1 sees no ring key
    visible[1] |= torch.eye(T, dtype=torch.bool)  # every query sees itself
    bias = [torch.zeros(v.shape).masked_fill(~v, -torch.inf)[:, None, None] for v in visible]
    got = attn.attend(q, list(zip(keys, values, bias)))  # [B, G, r, T, d]

    q64 = q.double().view(B, G, H // G, T, d)
    k64, v64 = torch.cat(keys, 2).double(), torch.cat(values, 2).double()
    scores = q64 @ k64.unsqueeze(2).transpose(-1, -2) / d**0.5 + torch.cat(bias, -1).double()
    want = torch.softmax(scores, -1) @ v64.unsqueeze(2)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_rotary_op_is_rope_at_each_position():
    """The export's RotaryEmbedding op, run eagerly, rotates each row at its own position,
    against numpy's rotate_half RoPE."""
    from infini_onnx.model.modeling import rope_cos_sin, rotary_embedding

    B, n, S, d, P = 2, 3, 4, 8, 20
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, n, S, d, generator=g)
    positions = torch.randint(0, P, (B, S), generator=g)
    cos, sin = rope_cos_sin(torch.arange(P), d, 10000.0)
    got = rotary_embedding(x, positions, cos, sin).numpy()
    angle = positions.numpy()[..., None] * 10000.0 ** (-np.arange(0, d, 2) / d)  # [B, S, d/2]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x1, x2 = x.numpy()[..., : d // 2], x.numpy()[..., d // 2 :]
    want = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
