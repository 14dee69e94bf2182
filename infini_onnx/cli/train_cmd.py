"""`infini train MODEL_DIR --text FILE ... --out OUT`: continual pre-training on any text."""

from __future__ import annotations

import click

from infini_onnx.cli.common import FiniteFloatRange, one_line_errors


@click.command("train")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--text",
    "texts",
    type=click.Path(dir_okay=False),
    multiple=True,
    required=True,
    help="Training text (repeatable); tokenized with the model's tokenizer.json.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Output model directory (checkpoints go to OUT/checkpoint).",
)
@click.option(
    "--eval-text",
    type=click.Path(dir_okay=False),
    default=None,
    help="Held-out text: its next-token loss before, during and after training.",
)
@click.option(
    "--eval-tokens",
    type=click.IntRange(2),
    default=65536,
    show_default=True,
    help="Tokens of the held-out text evaluated.",
)
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Rows (streams) per process; under torchrun the batch is this times the processes.",
)
@click.option(
    "--segments",
    type=click.IntRange(1),
    default=None,
    help="Segments per row per step: back-propagation through the memory spans them "
    "(default: 2, more if the window is longer than a segment).",
)
@click.option("--lr", type=FiniteFloatRange(0, 1), default=3e-4, show_default=True)
@click.option(
    "--gate-lr",
    type=FiniteFloatRange(0, 10),
    default=1e-2,
    show_default=True,
    help="Learning rate of the gates (they barely move at the ordinary rate).",
)
@click.option("--warmup", type=click.IntRange(0), default=50, show_default=True)
@click.option(
    "--virtual-length",
    type=FiniteFloatRange(1, 1e9),
    default=1.0,
    show_default=True,
    help="Each memory write counts this many times: short rows dilute the memory as "
    "a stream this many times longer would.",
)
@click.option(
    "--reset-memory-every",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Empty each row's memory every this many steps (rows staggered), so that training "
    "sees young memories as well as old ones, as a stream read from its start has (0: never).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(0),
    default=100,
    show_default=True,
    help="Write OUT/checkpoint every this many steps (0: never; then no --resume).",
)
@click.option(
    "--eval-every",
    type=click.IntRange(0),
    default=0,
    help="Evaluate the held-out text every this many steps (0: before and after).",
)
@click.option("--log-every", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Torch threads per process (default: the cores shared by the processes).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: one GPU per process (LOCAL_RANK) under torchrun.",
)
@click.option("--resume", is_flag=True, help="Continue the run in OUT from OUT/checkpoint.")
@one_line_errors
def train_command(model_dir, texts, out, eval_text, eval_tokens, steps, batch_size, segments,
                  lr, gate_lr, warmup, virtual_length, reset_memory_every, checkpoint_every,
                  eval_every, log_every, seed, threads, device, resume) -> None:  # fmt: skip
    """Continue pre-training MODEL_DIR on text: next-token loss over long streams, segment by
    segment, the memory carried between steps (docs/training.md, "infini train"). Runs under
    `torchrun --nproc_per_node N --no-python infini train ...` as N processes."""
    import hashlib
    from pathlib import Path

    from infini_onnx import modeldir
    from infini_onnx.errors import InfiniError
    from infini_onnx.model import InfiniLlamaForCausalLM
    from infini_onnx.pretrain import TextRecipe, default_segments, tokenize
    from infini_onnx.runtime.device import default_threads
    from infini_onnx.trainer import LoopConfig, Process, train

    if not resume and Path(out).is_dir() and any(Path(out).iterdir()):
        raise InfiniError(f"{out}: exists and is not empty; choose a new one or --resume")
    process = Process.start(device)
    if threads is None:
        threads = max(default_threads() // process.world, 1)
    model = InfiniLlamaForCausalLM.from_pretrained(model_dir)
    config, tokenizer_json = model.config, modeldir.tokenizer_text(model_dir)
    ids = tokenize(tokenizer_json, [Path(t) for t in texts], config.eos_token_id)
    eval_ids = None
    if eval_text:
        eval_ids = tokenize(tokenizer_json, [Path(eval_text)], config.eos_token_id)[:eval_tokens]
    recipe = TextRecipe(
        config, ids, batch_size, segments or default_segments(config), process.rank,
        process.world, virtual_length, eval_ids, reset_memory_every,
    )  # fmt: skip
    cfg = LoopConfig(
        steps=steps, lr=lr, gate_lr=gate_lr, warmup=warmup, log_every=log_every,
        checkpoint_every=checkpoint_every, eval_every=eval_every, seed=seed, threads=threads,
        device=device,
    )  # fmt: skip
    if process.rank == 0:
        click.echo(
            f"{len(ids):,} training tokens, {process.world} process(es) x {batch_size} rows x "
            f"{recipe.span} tokens per step"
        )
    identity = dict(  # what a resumed run must share with the run it continues
        texts=hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
        batch_size=batch_size,
        segments=recipe.span // config.segment_len,
        virtual_length=virtual_length,
        reset_memory_every=reset_memory_every,
    )
    train(
        model, recipe, cfg, out, tokenizer_json=tokenizer_json, resume=resume, log=click.echo,
        recipe_config=dict(model_dir=str(model_dir), **identity),
    )  # fmt: skip
