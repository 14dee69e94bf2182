"""Helpers shared by the stage commands (no heavy imports)."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import click

from infini_onnx.errors import InfiniError


def one_line_errors(fn: Callable) -> Callable:
    """Report InfiniError as `error: ...` on stderr with exit code 1, no traceback.

    Lets each stage command run on its own (infini-export, ...) and inside `infini`.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InfiniError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (which every range comparison lets through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
