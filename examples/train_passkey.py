"""Train one stage of a pass-key model (the shipped examples/models/passkey-tiny took four).

    python examples/train_passkey.py OUT_DIR [--init-from MODEL_DIR] [--virtual-max C] ...

Deterministic for a seed (same machine, same thread count). The pass-key task is a recipe of
`infini train`'s engine (infini_onnx/trainer.py). Prints a progress line every --log-every steps
(loss, mean gate, answer accuracy, length, minutes so far and left) and the pass-key accuracy at
--eval-lengths and the largest rho every --eval-every steps; writes the model directory and
training.json (the loop's and the task's config, every step's loss, the evaluations). The
stages of the shipped model are in its model card; the method in docs/training.md.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from infini_onnx.train import TrainConfig, train_passkey


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("out_dir")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, list):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs="+", default=value)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args())
    out_dir = args.pop("out_dir")
    accuracy = train_passkey(out_dir, TrainConfig(**args), log=lambda msg: print(msg, flush=True))
    print("final accuracy:", accuracy)


if __name__ == "__main__":
    main()
