"""The one writer and reader of a step graph's metadata (docs/design.md, "The step graph").

Pure Python: the exporter and the quantizer pass `onnx` metadata_props, the runtime passes
onnxruntime's custom_metadata_map; all get the same StepGraphInfo or the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from infini_onnx.config import InfiniConfig
from infini_onnx.errors import ModelFileError
from infini_onnx.stepgraph.names import (
    FORMAT_VERSION,
    INPUT_NAMES,
    KEY_CONFIG,
    KEY_FORMAT_VERSION,
    KEY_MODEL_ID,
    KEY_TOKENIZER,
    KEY_VARIANT,
    OUTPUT_NAMES,
)


@dataclass(frozen=True)
class StepGraphInfo:
    """What a step graph says about itself."""

    config: InfiniConfig
    variant: str  # fp32 | fp16 | int8 | int8-static | int4
    model_id: str  # sha256 of the source model directory (modeldir.model_id)
    tokenizer_json: str | None = None  # tokenizer.json text, if the model has one

    def to_props(self) -> dict[str, str]:
        """The metadata_props of the file."""
        props = {
            KEY_FORMAT_VERSION: str(FORMAT_VERSION),
            KEY_CONFIG: json.dumps(self.config.to_dict(), sort_keys=True),
            KEY_VARIANT: self.variant,
            KEY_MODEL_ID: self.model_id,
        }
        if self.tokenizer_json is not None:
            props[KEY_TOKENIZER] = self.tokenizer_json
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> StepGraphInfo:
        """Read the metadata of the file `source`; ModelFileError (or ModelDirError for a bad
        config) names what is wrong."""
        version = props.get(KEY_FORMAT_VERSION)
        if version is None:
            raise ModelFileError(
                f"{source}: no {KEY_FORMAT_VERSION} metadata: not a step graph exported by "
                "infini-onnx (run `infini export`)"
            )
        if version != str(FORMAT_VERSION):
            raise ModelFileError(
                f"{source}: step-graph format version {version} is not supported (this "
                f"infini-onnx reads version {FORMAT_VERSION}); upgrade infini-onnx"
            )
        missing = [k for k in (KEY_CONFIG, KEY_MODEL_ID) if k not in props]
        if missing:
            raise ModelFileError(f"{source}: metadata {missing[0]!r} missing")
        try:
            config_dict = json.loads(props[KEY_CONFIG])
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{source}: metadata {KEY_CONFIG!r} is not JSON ({e})") from None
        return cls(
            config=InfiniConfig.from_dict(config_dict, source=f"{source} metadata"),
            variant=props.get(KEY_VARIANT, "fp32"),
            model_id=props[KEY_MODEL_ID],
            tokenizer_json=props.get(KEY_TOKENIZER),
        )


def check_io(inputs: Collection[str], outputs: Collection[str], source: str) -> None:
    """Refuse a graph whose input or output names are not the contract's."""
    missing = [n for n in INPUT_NAMES if n not in inputs]
    missing += [n for n in OUTPUT_NAMES if n not in outputs]
    extra = [n for n in inputs if n not in INPUT_NAMES]
    extra += [n for n in outputs if n not in OUTPUT_NAMES]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ModelFileError(
            f"{source}: not a step graph: inputs/outputs differ from the contract ({what})"
        )
