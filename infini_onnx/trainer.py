"""The training loop of infini-llama (docs/training.md, "infini train"): one engine for every
recipe (continual pre-training on text, the pass-key task).

A recipe owns its data, forward pass and loss (`Recipe.step`); the engine owns the rest:
- the optimizer (AdamW; gates at their own rate, no weight decay on gates and norms);
- the schedule (linear warm-up, then cosine);
- clipping;
- several processes under torchrun (DistributedDataParallel: each process runs its own rows of
  the batch, gradients averaged);
- the progress line with its ETA;
- checkpoints written atomically and `resume` (OUT/checkpoint, removed when the run completes);
- the final model directory.

On resume the run continues the same loss curve: the checkpoint holds the weights, the
optimizer, the step and every process's recipe state (random generators, carried memory).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from infini_onnx.errors import InfiniError
from infini_onnx.model import InfiniLlamaForCausalLM

CHECKPOINT = "checkpoint"  # OUT/checkpoint: a model directory plus trainer.pt and recipe-*.pt


@dataclass
class LoopConfig:
    steps: int = 1000
    lr: float = 3e-4
    gate_lr: float = 1e-2  # gates barely move at the ordinary rate (docs/training.md)
    weight_decay: float = 0.05  # never on gates or norms
    warmup: int = 50
    log_every: int = 10
    checkpoint_every: int = 100  # 0: none (a run that stops cannot resume)
    eval_every: int = 0  # 0: only before and after
    seed: int = 0
    threads: int = 2
    device: str = "cpu"


class Recipe(Protocol):
    def step(self, model: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of this process's rows at `step` (with the forward through `model`, the
        DDP-wrapped one under torchrun) and metrics to log."""

    def evaluate(self, model: InfiniLlamaForCausalLM, step: int) -> dict[str, Any]:
        """Held-out figures (process 0 only); {} if none."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Process:
    """This process's place in the run: rank, world size (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # this process's device: "cpu" or "cuda:<local rank>"

    @classmethod
    def start(cls, device: str = "cpu") -> Process:
        """Join the process group torchrun describes (gloo on CPU, nccl on GPUs, one GPU per
        process), or run alone."""
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            return cls(device=device)
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def mean(self, value: float) -> float:
        """The mean of a number over the processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def optimizer_for(model: InfiniLlamaForCausalLM, cfg: LoopConfig) -> torch.optim.AdamW:
    gates = [p for n, p in model.named_parameters() if n.endswith("self_attn.gate")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    rest = [p for p in model.parameters() if all(p is not q for q in gates + no_decay)]
    return torch.optim.AdamW(
        [
            dict(params=rest, weight_decay=cfg.weight_decay),
            dict(params=no_decay, weight_decay=0.0),
            dict(params=gates, weight_decay=0.0, lr=cfg.gate_lr),
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )


def lr_scale(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up over cfg.warmup steps times a cosine from 1 to 0 over the run."""
    return min(step / max(cfg.warmup, 1), 1.0) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


@torch.no_grad()
def mean_gate(model: InfiniLlamaForCausalLM) -> float:
    """sigmoid(gate) averaged over every head: how far the memory is open."""
    gates = torch.stack([layer.self_attn.gate for layer in model.model.layers])
    return float(torch.sigmoid(gates.float()).mean())


def train(
    model: InfiniLlamaForCausalLM,
    recipe: Recipe,
    cfg: LoopConfig,
    out_dir: str | Path,
    *,
    tokenizer_json: str | None = None,
    recipe_config: dict[str, Any] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train `model` with `recipe` for cfg.steps and save the model directory to out_dir (with
    training.json: the loop's and the recipe's config and the history). Returns the history
    (process 0's)."""
    # sigma = elu + 1 makes tiny values, and denormals are slow. The flag is the CPU thread's:
    # numpy and ONNX Runtime read it too, so it is set back when training ends.
    torch.set_flush_denormal(True)
    try:
        return _train(model, recipe, cfg, Path(out_dir), tokenizer_json, recipe_config, resume, log)
    finally:
        torch.set_flush_denormal(False)


def _train(
    model,
    recipe: Recipe,
    cfg: LoopConfig,
    out_dir: Path,
    tokenizer_json,
    recipe_config,
    resume,
    log,
) -> list[dict[str, Any]]:
    process = Process.start(cfg.device)
    say = log if process.rank == 0 else (lambda msg: None)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model.to(process.device).train()
    identity = json.dumps(dict(steps=cfg.steps, recipe=recipe_config or {}), sort_keys=True)
    optimizer = optimizer_for(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history: list[dict[str, Any]] = []
    first = 1
    if resume:
        first, history = load_checkpoint(
            out_dir / CHECKPOINT, model, optimizer, recipe, process, identity
        )
        say(f"resumed from {out_dir / CHECKPOINT} at step {first - 1}")
    forward = model
    if process.world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    if first == 1:
        evaluation(model, recipe, 0, history, process, say)
    start, done = time.perf_counter(), first - 1
    for step in range(first, cfg.steps + 1):
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * lr_scale(step, cfg)
        loss, metrics = recipe.step(forward, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        row = dict(step=step, loss=process.mean(loss.item()), gate=mean_gate(model))
        row.update({k: process.mean(v) for k, v in metrics.items()})
        history.append(row)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step - done) * (cfg.steps - step)
            extra = "".join(f" {k} {row[k]:.3f}" for k in metrics)  # means over processes
            say(
                f"step {step}/{cfg.steps} loss {row['loss']:.4f} gate {row['gate']:.4f}{extra} "
                f"{elapsed / 60:.1f} min, {eta / 60:.1f} min left"
            )
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            evaluation(model, recipe, step, history, process, say)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_checkpoint(out_dir, step, model, optimizer, recipe, history, identity, process)
    evaluation(model, recipe, cfg.steps, history, process, say)
    if process.rank == 0:
        model.cpu().eval()
        model.save_pretrained(out_dir, tokenizer_json=tokenizer_json)
        (out_dir / "training.json").write_text(
            json.dumps(
                dict(config=asdict(cfg), recipe=recipe_config or {}, history=history), indent=1
            )
            + "\n"
        )
        for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp"):  # the run is done
            shutil.rmtree(out_dir / name, ignore_errors=True)
        say(f"wrote {out_dir}")
    process.barrier()
    return history


def evaluation(model, recipe: Recipe, step: int, history: list, process: Process, say) -> None:
    """Process 0 evaluates (the others wait) and logs and records what the recipe reports."""
    if process.rank == 0:
        model.eval()
        figures = recipe.evaluate(model, step)
        model.train()
        if figures:
            history.append(dict(step=step, eval=figures))
            say(f"eval at step {step}: " + "  ".join(f"{k} {v}" for k, v in figures.items()))
    process.barrier()


def save_checkpoint(
    out_dir: Path, step: int, model, optimizer, recipe: Recipe, history, identity: str, process
) -> None:
    """OUT/checkpoint, replaced atomically: every process writes its recipe state into a new
    directory, process 0 the model and the optimizer, then renames it into place (the previous
    one is kept as checkpoint.old until the new one is in place)."""
    final, tmp = out_dir / CHECKPOINT, out_dir / f"{CHECKPOINT}.tmp"
    if process.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    process.barrier()
    torch.save(recipe.state_dict(), tmp / f"recipe-{process.rank}.pt")
    if process.rank == 0:
        model.save_pretrained(tmp)
        trainer = dict(
            step=step,
            world=process.world,
            optimizer=optimizer.state_dict(),
            history=json.dumps(history),
            identity=identity,
        )
        torch.save(trainer, tmp / "trainer.pt")
    process.barrier()
    if process.rank == 0:
        old = out_dir / f"{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    process.barrier()


def load_checkpoint(
    path: Path, model, optimizer, recipe: Recipe, process: Process, identity: str
) -> tuple[int, list]:
    """Restore a run from OUT/checkpoint (or checkpoint.old, if a save was cut between its two
    renames); returns (the next step, the history). The run must be the same: steps, recipe
    settings and data, number of processes."""
    if not (path / "trainer.pt").is_file():
        path = path.with_name(f"{CHECKPOINT}.old")
    if not (path / "trainer.pt").is_file():
        raise InfiniError(f"{path.with_name(CHECKPOINT)}: no checkpoint to resume from")
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    if trainer["identity"] != identity:
        saved, now = json.loads(trainer["identity"]), json.loads(identity)
        changed = [k for k in now["recipe"] if saved["recipe"].get(k) != now["recipe"][k]]
        what = "steps" if saved["steps"] != now["steps"] else ", ".join(changed) or "settings"
        raise InfiniError(
            f"{path}: the run is resumed with other {what} than it was started with; resume "
            "with the same options, or start a new run"
        )
    if trainer["world"] != process.world:
        raise InfiniError(
            f"{path}: written by {trainer['world']} processes, resumed by {process.world}: "
            "resume with the same number (each holds its rows' memory)"
        )
    weights = InfiniLlamaForCausalLM.from_pretrained(path)
    model.load_state_dict(weights.state_dict())
    optimizer.load_state_dict(trainer["optimizer"])
    recipe.load_state_dict(torch.load(path / f"recipe-{process.rank}.pt", weights_only=True))
    return trainer["step"] + 1, json.loads(trainer["history"])
