"""Shared fixtures: tiny model directories and exported step graphs, built once per session."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

# Mutation runs (tests/mutation/run_mutmut.sh) start pytest once per mutant: the exported tiny
# graphs are then kept in this directory across runs instead of being traced every time.
EXPORT_CACHE = os.environ.get("INFINI_TEST_EXPORT_CACHE")

# Tiny variants: (memory_update, gqa). Plain heads use num_key_value_heads == num_attention_heads.
VARIANTS = [("delta", True), ("linear", False), ("linear", True), ("delta", False)]


@pytest.fixture(scope="session")
def model_dir_factory(tmp_path_factory):
    """model_dir_factory(memory_update="delta", gqa=True, **overrides) -> Path (cached)."""
    cache: dict[tuple, Path] = {}

    def make(memory_update: str = "delta", gqa: bool = True, **overrides) -> Path:
        from infini_onnx.model import init_model_dir

        key = (memory_update, gqa, tuple(sorted(overrides.items())))
        if key not in cache:
            name = f"tiny-{memory_update}-{'gqa' if gqa else 'mha'}-{len(cache)}"
            path = tmp_path_factory.mktemp(name)
            init_model_dir(
                path,
                "tiny",
                seed=zlib.crc32(repr(key).encode()),  # the same weights whatever the test order
                memory_update=memory_update,
                num_key_value_heads=2 if gqa else 4,
                **overrides,
            )
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def onnx_factory(model_dir_factory, tmp_path_factory):
    """onnx_factory(memory_update="delta", gqa=True, **overrides) -> (model_dir, onnx_path)."""
    cache: dict[tuple, tuple[Path, Path]] = {}

    def make(memory_update: str = "delta", gqa: bool = True, **overrides):
        from infini_onnx.export.exporter import export_model

        key = (memory_update, gqa, tuple(sorted(overrides.items())))
        if key not in cache:
            model_dir = model_dir_factory(memory_update, gqa, **overrides)
            if EXPORT_CACHE:
                out = Path(EXPORT_CACHE) / f"{zlib.crc32(repr(key).encode()):08x}.onnx"
                if not out.is_file():
                    export_model(model_dir, out)
            else:
                out = tmp_path_factory.mktemp("onnx") / "model.onnx"
                export_model(model_dir, out)
            cache[key] = (model_dir, out)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_onnx(onnx_factory):
    """The default tiny model (delta rule, GQA): (model_dir, onnx_path)."""
    return onnx_factory()


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx):
    """The default tiny model in the runtime (one per test module: some tests patch it)."""
    from infini_onnx.runtime import InfiniModel

    return InfiniModel(tiny_onnx[1], threads=1)
