"""Train the pass-key model shipped in examples/models/passkey-tiny (2 CPU cores, < 60 min).

    python examples/train_passkey.py examples/models/passkey-tiny --seed 0

Deterministic for a seed (same machine, same thread count). Prints the loss and the answer
accuracy every few steps and the pass-key accuracy at lengths well beyond the training length
every --eval-every steps; writes the model directory and training.json (config and evaluations).
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
