"""The pass-key task: a recipe of the trainer (trainer.py), backpropagating through the memory.

Samples are a few segments long (a curriculum up to `max_len` bytes). With `virtual_max` > 1
each filler byte's memory write counts c times, so that a short sample dilutes the memory like
a stream c times longer ("virtual length"); `retrieval_margin` (rho) tracks how long a stream
each head's retrieval survives. Evaluation streams much longer haystacks through the reference
model segment by segment. The method and its limits: docs/training.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from infini_onnx import passkey
from infini_onnx.config import preset_config
from infini_onnx.model import InfiniLlamaForCausalLM
from infini_onnx.model.modeling import sigma
from infini_onnx.tokenizer import byte_level_tokenizer
from infini_onnx.trainer import LoopConfig, train

# The model: head_dim 128 and the delta rule (docs/training.md), 64-byte segments.
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
    gate_lr: float = 5e-2  # gates barely move at the ordinary rate (docs/training.md)
    weight_decay: float = 0.05  # never on gates or norms
    warmup: int = 50
    answer_weight: float = 20.0  # the answer bytes weigh this much more than the filler's
    min_len: int = 256
    short_len: int = 384  # the longest sequence during the first short_steps: learn to retrieve
    short_steps: int = 1000
    max_len: int = 4096  # the longest training sequence, in bytes (= tokens)
    curriculum_steps: int = 1100  # then the longest sequence grows to max_len over these steps
    virtual_max: float = 1.0  # filler writes count c times, c log-uniform in [1, virtual_max]
    cross_answer: float = 0.0  # share of batches where a segment boundary splits the answer
    real_share: float = 0.0  # share of batches of real streams: c = 1, the needle at any depth
    real_min: int = 1024  # their lengths, log-uniform in [real_min, real_max] bytes
    real_max: int = 8192
    real_batch_size: int = 4  # their rows (they are longer than the others)
    near_share: float = 0.0  # share of the other batches with the needle right before the question
    log_every: int = 10
    eval_every: int = 400
    eval_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    eval_trials: int = 6
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # "cuda" runs faster but its results differ in the last bits from CPU's
    init_from: str = ""  # a model directory to continue training (default: a fresh model)
    local_window: int = 0  # W of the local window (0: keep the model's; docs/training.md)


def encode(text: str) -> list[int]:
    """Byte-level token ids (the tokenizer of `infini init`: id = byte)."""
    return list(text.encode())


def make_sample(
    rng: random.Random,
    length: int,
    segment_len: int,
    virtual: float,
    gap: int | None = None,
    near: bool = False,
) -> tuple[list[int], list[float]]:
    """One pass-key sample of exactly `length` bytes (haystack and answer) and the memory-write
    weight of each byte: `virtual` for filler, 1 for the needle, question and answer.

    The needle sits at a random depth but at least `gap` bytes of filler (default: a segment)
    before the question, so that the answer has to come through the memory; gap 0 lets it sit
    anywhere, even inside the question's own window. `near` puts it right before the question
    or one filler sentence before: partly in the window, partly only in the memory."""
    key = passkey.random_key(rng)
    prompt_len = length - len(passkey.answer(key))
    repeats = passkey.haystack_room(prompt_len) // len(passkey.FILLER)
    gap = segment_len if gap is None else gap
    fewest = -(-gap // len(passkey.FILLER))  # whole repeats after the needle
    if repeats < fewest:
        raise ValueError(f"a {length}-byte sample has no room for a segment of filler")
    if near:
        depth = (repeats - rng.randint(0, min(1, repeats))) / repeats
    else:
        depth = rng.uniform(0.0, (repeats - fewest) / repeats)
    text = "".join(passkey.haystack(prompt_len, depth, key)) + passkey.answer(key)
    weights = [virtual] * len(text)
    start = text.index(passkey.needle(key))
    weights[start : start + len(passkey.needle(key))] = [1.0] * len(passkey.needle(key))
    question = prompt_len - len(passkey.QUESTION)
    weights[question:] = [1.0] * (length - question)
    return encode(text), weights


def make_batch(
    rng: random.Random, cfg: TrainConfig, batch: int, length: int, segment_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Input ids, next-token targets and write weights [B, S] (weights None when all are 1).

    With probability cfg.real_share the batch is one of real streams instead: cfg.real_batch_size
    rows of a length log-uniform in [cfg.real_min, cfg.real_max], every write counting once,
    the needle at any depth (docs/training.md). Otherwise, with probability cfg.near_share, the
    needle ends at most one filler sentence before the question; with probability
    cfg.cross_answer, the length grows so that a segment boundary falls inside the answer or the
    question's last 12 bytes: without a local window the new segment then starts with an empty
    local context (or one that reads like filler: "y is" of "sky is") and the rest of the
    question and answer must come through the memory."""
    n_answer = len(passkey.answer("00000"))
    if rng.random() < cfg.real_share:
        length = round(math.exp(rng.uniform(math.log(cfg.real_min), math.log(cfg.real_max))))
        rows = [
            make_sample(rng, length, segment_len, 1.0, gap=0)[0] for _ in range(cfg.real_batch_size)
        ]
        ids = torch.tensor(rows)
        return ids[:, :-1], ids[:, 1:], None
    near = rng.random() < cfg.near_share
    if rng.random() < cfg.cross_answer:
        cut = rng.randint(-12, n_answer - 2)  # the answer byte (< 0: question byte) opening it
        length += -(length - n_answer + cut) % segment_len
    log_c = math.log(cfg.virtual_max)
    rows, weights = [], []
    for _ in range(batch):
        c = math.exp(rng.uniform(0.0, log_c))
        ids, w = make_sample(rng, length, segment_len, c, gap=0 if near else None, near=near)
        rows.append(ids)
        weights.append(w)
    ids = torch.tensor(rows)
    write_weights = torch.tensor(weights)[:, :-1] if cfg.virtual_max > 1 else None
    return ids[:, :-1], ids[:, 1:], write_weights


def answer_weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, n_answer: int, answer_weight: float
) -> torch.Tensor:
    """Cross-entropy averaged over the batch, each sample's last n_answer targets (the answer)
    counting answer_weight times. logits [B, T, V], targets [B, T]."""
    weights = torch.ones(targets.shape[1], device=logits.device)
    weights[-n_answer:] = answer_weight
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (loss.view(targets.shape) * weights).sum() / (weights.sum() * targets.shape[0])


@torch.no_grad()
def retrieve(model: InfiniLlamaForCausalLM, length: int, depth: float, key: str) -> str:
    """Stream a haystack through the model and greedily generate the answer's bytes."""
    device = model.lm_head.weight.device
    chunks = passkey.haystack(length, depth, key)
    state, last = model.new_state(1, device), next(chunks)
    for chunk in chunks:  # the last chunk (the question) is the prompt of generate
        ids = torch.tensor([encode(last)], device=device)
        _, state = model(ids, state, last_logits_only=True)
        last = chunk
    ids = torch.tensor([encode(last)], device=device)
    out = [int(t) for t in model.generate(ids, len(passkey.answer(key)), state)]
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


@torch.no_grad()
def retrieval_margin(
    model: InfiniLlamaForCausalLM, length: int = 1024, samples: int = 2, seed: int = 99
) -> torch.Tensor:
    """log10 rho per layer and query head [L, H]: how much more the answer's queries match the
    whole needle's memory keys than one average filler key (docs/training.md).

    After T filler tokens the needle's share of a memory read is about rho / (rho + T), so
    rho is the stream length at which that head's retrieval has faded to one half."""
    c, device = model.config, model.lm_head.weight.device
    rng = random.Random(seed)
    layers = [layer.self_attn for layer in model.model.layers]
    inputs: list[torch.Tensor] = []  # each layer's attention input, piece by piece
    hooks = [a.register_forward_pre_hook(lambda _, args: inputs.append(args[0])) for a in layers]
    n_query = len(passkey.answer("00000")) - 2  # ' ' and the first 4 digits predict a digit
    total = torch.zeros(len(layers), c.num_attention_heads)
    try:
        for _ in range(samples):
            key = passkey.random_key(rng)
            prompt = "".join(passkey.haystack(length, 0.5, key))
            text = prompt + passkey.answer(key)[:n_query]
            inputs.clear()
            model(torch.tensor([encode(text)], device=device))
            start = prompt.index(passkey.needle(key))
            needle = torch.zeros(len(text), dtype=torch.bool)
            needle[start : start + len(passkey.needle(key))] = True
            filler = ~needle
            filler[len(prompt) - len(passkey.QUESTION) :] = False
            needle, filler = needle.to(device), filler.to(device)
            for i, attn in enumerate(layers):
                x = torch.cat(inputs[i :: len(layers)], dim=1)[0]  # [S, D]
                q, k, _ = attn.project(x[None])  # [1, H, S, d], [1, G, S, d]
                sq, sk = sigma(q[0].transpose(0, 1)), sigma(k[0].transpose(0, 1))
                sk = sk.repeat_interleave(c.num_groups, dim=1)  # [S, H, d]
                queries = sq[-n_query:]  # [n, H, d]
                to_needle = (queries * sk[needle].sum(0)).sum(-1)  # [n, H]
                to_filler = (queries * sk[filler].mean(0)).sum(-1)
                total[i] += (to_needle / to_filler).log10().mean(0).cpu()
    finally:
        for hook in hooks:
            hook.remove()
    return total / samples


class PasskeyRecipe:
    """The pass-key task as a recipe of the trainer (trainer.py): batches of `make_batch` at
    the curriculum's length, the answer-weighted loss, pass-key accuracy and rho as the
    evaluation."""

    def __init__(self, cfg: TrainConfig, segment_len: int):
        self.cfg, self.segment_len = cfg, segment_len
        self.rng = random.Random(cfg.seed)
        self.n_answer = len(encode(passkey.answer("00000")))

    def step(self, model, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        growth = min(max(step - cfg.short_steps, 0) / cfg.curriculum_steps, 1.0)
        longest = int(cfg.short_len + growth * (cfg.max_len - cfg.short_len))
        length = round(math.exp(self.rng.uniform(math.log(cfg.min_len), math.log(longest))))
        ids, targets, write_weights = make_batch(
            self.rng, cfg, cfg.batch_size, length, self.segment_len
        )
        ids, targets = ids.to(cfg.device), targets.to(cfg.device)
        if write_weights is not None:
            write_weights = write_weights.to(cfg.device)
        logits, _ = model(ids, write_weights=write_weights)
        loss = answer_weighted_loss(logits, targets, self.n_answer, cfg.answer_weight)
        hits = logits[:, -self.n_answer :].argmax(-1) == targets[:, -self.n_answer :]
        return loss, {"answer_acc": hits.float().mean().item(), "len": float(ids.shape[1] + 1)}

    def evaluate(self, model: InfiniLlamaForCausalLM, step: int) -> dict[str, Any]:
        if step == 0:  # a new model finds nothing; evaluations start after training
            return {}
        accuracy = evaluate(model, self.cfg.eval_lengths, self.cfg.eval_trials)
        rho = retrieval_margin(model)  # log10 rho [L, H]
        where = divmod(int(rho.argmax()), rho.shape[1])
        return {
            "accuracy": {str(n): a for n, a in accuracy.items()},
            "log10_rho": f"{rho.max():.2f} (layer {where[0]} head {where[1]})",
        }

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])


def train_passkey(
    out_dir: str | Path, cfg: TrainConfig, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Train from a fresh `infini init`-style model (or cfg.init_from) with the trainer and save
    the model directory to out_dir; returns the last pass-key accuracy by length. One
    process: every process would draw the same batches."""
    window = dict(local_window=cfg.local_window) if cfg.local_window else {}
    if cfg.init_from:
        model = InfiniLlamaForCausalLM.from_pretrained(cfg.init_from, **window)
    else:
        model = InfiniLlamaForCausalLM(preset_config("tiny", **PASSKEY_MODEL, **window))
        model.init_weights(cfg.seed)
    loop = LoopConfig(
        steps=cfg.steps,
        lr=cfg.lr,
        gate_lr=cfg.gate_lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        log_every=cfg.log_every,
        checkpoint_every=0,
        eval_every=cfg.eval_every,
        seed=cfg.seed,
        threads=cfg.threads,
        device=cfg.device,
    )
    history = train(
        model,
        PasskeyRecipe(cfg, model.config.segment_len),
        loop,
        out_dir,
        tokenizer_json=byte_level_tokenizer().to_str(pretty=True),
        recipe_config=asdict(cfg),
        log=log,
    )
    evals = [row["eval"]["accuracy"] for row in history if "eval" in row]
    return evals[-1] if evals else {}
