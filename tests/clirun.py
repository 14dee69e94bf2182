"""The `infini` command run in-process, for the tests of its errors."""

from __future__ import annotations

from click.testing import CliRunner, Result

from infini_onnx.cli import main


def infini(*args: object) -> Result:
    """`infini ARGS` in-process; the exit code and all output."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result: Result, words: str) -> None:
    """Exit 1 with no traceback, the last line `error: ...` holding `words`."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], result.output
