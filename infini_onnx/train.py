"""Train an infini-llama on the pass-key task (PyTorch, CPU), backpropagating through the memory.

Sequences are a few segments long (a curriculum up to `max_len` bytes); evaluation runs at lengths
several times longer, streamed through the reference model segment by segment.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from infini_onnx import passkey
from infini_onnx.config import preset_config
from infini_onnx.model import InfiniLlamaForCausalLM, from_pretrained, save_pretrained
from infini_onnx.tokenizer import byte_level_tokenizer

# The model: head_dim 128 and the delta rule (NOTES), 64-byte segments.
PASSKEY_MODEL = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=128,
    segment_len=64,
    memory_update="delta",
)


@dataclass
class TrainConfig:
    steps: int = 2400
    batch_size: int = 12
    lr: float = 2e-3
    gate_lr: float = 5e-2  # gates barely move at the ordinary rate (NOTES)
    weight_decay: float = 0.05  # never on gates or norms
    warmup: int = 50
    answer_weight: float = 20.0  # the answer bytes weigh this much more than the filler's
    min_len: int = 128
    short_len: int = 384  # the longest sequence during the first short_steps: learn to retrieve
    short_steps: int = 1000
    max_len: int = 4096  # the longest training sequence, in bytes (= tokens)
    curriculum_steps: int = 1100  # then the longest sequence grows to max_len over these steps
    log_every: int = 10
    eval_every: int = 400
    eval_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    eval_trials: int = 6
    seed: int = 0
    threads: int = 2
    init_from: str = ""  # a model directory to continue training (default: a fresh model)


def encode(text: str) -> list[int]:
    """Byte-level token ids (the tokenizer of `infini init`: id = byte)."""
    return list(text.encode())


def make_batch(rng: random.Random, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and next-token targets [B, S] for pass-key samples of about `length` bytes."""
    rows = []
    for _ in range(batch):
        key = passkey.random_key(rng)
        prompt = "".join(passkey.haystack(length, rng.random(), key))
        rows.append(encode(prompt + passkey.answer(key)))
    ids = torch.tensor(rows)
    return ids[:, :-1], ids[:, 1:]


def _answer_weights(targets: int, n_answer: int, weight: float = 1.0) -> torch.Tensor:
    w = torch.ones(targets)
    w[-n_answer:] = weight
    return w


@torch.no_grad()
def retrieve(model: InfiniLlamaForCausalLM, length: int, depth: float, key: str) -> str:
    """Stream a haystack through the model and greedily generate the answer's bytes."""
    state = model.new_state(1)
    logits = None
    for chunk in passkey.haystack(length, depth, key):
        logits, state = model(torch.tensor([encode(chunk)]), state, last_logits_only=True)
    out = []
    for _ in range(len(passkey.answer(key))):
        token = int(logits[0, -1].argmax())
        out.append(token)
        logits, state = model(torch.tensor([[token]]), state)
    return bytes(t for t in out if t < 256).decode(errors="replace")


def evaluate(
    model: InfiniLlamaForCausalLM, lengths: list[int], trials: int, seed: int = 1234
) -> dict[int, float]:
    """Accuracy per length, depths spread evenly over [0, 1]."""
    rng = random.Random(seed)
    result = {}
    for length in lengths:
        hits = 0
        for i in range(trials):
            key = passkey.random_key(rng)
            depth = i / max(trials - 1, 1)
            hits += retrieve(model, length, depth, key) == passkey.answer(key)
        result[length] = hits / trials
    return result


def train_passkey(
    out_dir: str | Path, cfg: TrainConfig, log: Callable[[str], None] = print
) -> dict[int, float]:
    """Train from a fresh `infini init`-style model and save the model directory to out_dir."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # sigma = elu + 1 makes tiny values; denormals are slow
    rng = random.Random(cfg.seed)
    if cfg.init_from:
        model = from_pretrained(cfg.init_from)
    else:
        model = InfiniLlamaForCausalLM(preset_config("tiny", **PASSKEY_MODEL))
        model.init_weights(cfg.seed)
    model.train()
    gates = [p for n, p in model.named_parameters() if n.endswith("self_attn.gate")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    rest = [p for p in model.parameters() if all(p is not q for q in gates + no_decay)]
    optimizer = torch.optim.AdamW(
        [
            dict(params=rest, weight_decay=cfg.weight_decay),
            dict(params=no_decay, weight_decay=0.0),
            dict(params=gates, weight_decay=0.0, lr=cfg.gate_lr),
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history, start = [], time.perf_counter()
    n_answer = len(encode(passkey.answer("00000")))
    for step in range(1, cfg.steps + 1):
        growth = min(max(step - cfg.short_steps, 0) / cfg.curriculum_steps, 1.0)
        longest = int(cfg.short_len + growth * (cfg.max_len - cfg.short_len))
        length = round(math.exp(rng.uniform(math.log(cfg.min_len), math.log(longest))))
        ids, targets = make_batch(rng, cfg.batch_size, length)
        weights = _answer_weights(targets.shape[1], n_answer, cfg.answer_weight)
        scale = min(step / cfg.warmup, 1.0) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * scale
        logits, _ = model(ids)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (loss.view(targets.shape) * weights).sum() / (weights.sum() * targets.shape[0])
        answer_acc = (logits[:, -n_answer:].argmax(-1) == targets[:, -n_answer:]).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step % cfg.log_every == 0:
            log(
                f"step {step}/{cfg.steps} len {ids.shape[1] + 1} loss {loss.item():.3f} "
                f"answer-acc {answer_acc.item():.2f} gate {torch.sigmoid(gates[-1]).mean():.2f} "
                f"{elapsed / 60:.1f} min"
            )
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            acc = evaluate(model, cfg.eval_lengths, cfg.eval_trials)
            model.train()
            history.append(dict(step=step, minutes=elapsed / 60, accuracy=acc))
            log("eval " + "  ".join(f"{n}: {a:.0%}" for n, a in acc.items()))
    model.eval()
    save_pretrained(model, out_dir, tokenizer_json=byte_level_tokenizer().to_str(pretty=True))
    (Path(out_dir) / "training.json").write_text(
        json.dumps(dict(config=asdict(cfg), history=history), indent=2) + "\n"
    )
    return history[-1]["accuracy"] if history else {}
