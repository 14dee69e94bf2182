"""Errors the CLI reports as one line (no traceback)."""


class InfiniError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ModelDirError(InfiniError):
    """A model directory (config.json, safetensors, tokenizer.json) is missing or invalid."""
