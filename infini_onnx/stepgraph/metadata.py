"""The one writer and reader of a step graph's metadata (docs/design.md, "The step graph").

Pure Python: the exporter and the quantizer pass `onnx` metadata_props, the runtime passes
onnxruntime's custom_metadata_map; all get the same StepGraphInfo or the same errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from infini_onnx.config import InfiniConfig
from infini_onnx.errors import ModelFileError
from infini_onnx.stepgraph.names import (
    KEY_CONFIG,
    KEY_DIGEST,
    KEY_FORMAT_VERSION,
    KEY_GATES,
    KEY_MODEL_ID,
    KEY_TOKENIZER,
    KEY_VARIANT,
)
from infini_onnx.stepgraph.state_spec import LATEST, SPECS, StateSpec

# infini.gates is left out: it only informs `infini inspect`, and a runtime that does not
# know the key must still accept the file's digest.
SIGNED_KEYS = (KEY_FORMAT_VERSION, KEY_CONFIG, KEY_VARIANT, KEY_MODEL_ID, KEY_TOKENIZER)


@dataclass(frozen=True)
class StepGraphInfo:
    """What a step graph says about itself."""

    config: InfiniConfig
    variant: str  # a name of the variant table (variants.py)
    model_id: str  # sha256 of the source model directory (modeldir.model_id)
    tokenizer_json: str | None = None  # tokenizer.json text, if the model has one
    spec: StateSpec = LATEST  # the format version's state contract
    gates: list[list[float]] | None = None  # [L][H] gate logits (older graphs have none)

    def to_props(self) -> dict[str, str]:
        """The metadata_props of the file, with the digest of the others."""
        props = {
            KEY_FORMAT_VERSION: str(self.spec.version),
            KEY_CONFIG: json.dumps(self.config.to_dict(), sort_keys=True),
            KEY_VARIANT: self.variant,
            KEY_MODEL_ID: self.model_id,
        }
        if self.tokenizer_json is not None:
            props[KEY_TOKENIZER] = self.tokenizer_json
        if self.gates is not None:
            props[KEY_GATES] = json.dumps(self.gates)
        return {**props, KEY_DIGEST: digest(props)}

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
        spec = SPECS.get(int(version)) if version in map(str, SPECS) else None
        if spec is None:
            shown = version if version.isdigit() else repr(version)
            readable = " and ".join(map(str, SPECS))
            raise ModelFileError(
                f"{source}: step-graph format version {shown} is not supported (this "
                f"infini-onnx reads versions {readable}); upgrade infini-onnx"
            )
        missing = [k for k in (KEY_CONFIG, KEY_MODEL_ID) if k not in props]
        if missing:
            raise ModelFileError(f"{source}: metadata {missing[0]!r} missing")
        if KEY_DIGEST not in props:
            raise ModelFileError(
                f"{source}: the metadata has no digest ({KEY_DIGEST}): edited, or exported "
                "before infini-onnx signed its metadata; export the model again"
            )
        if props[KEY_DIGEST] != digest(props):
            raise ModelFileError(
                f"{source}: metadata edited after export ({KEY_DIGEST} does not match): "
                "export the model again"
            )
        try:
            config_dict = json.loads(props[KEY_CONFIG])
        except (ValueError, RecursionError) as e:
            raise ModelFileError(
                f"{source}: metadata {KEY_CONFIG!r} is not JSON ({type(e).__name__})"
            ) from None
        config = InfiniConfig.from_dict(config_dict, source=f"{source} metadata")
        return cls(
            config=config,
            variant=props.get(KEY_VARIANT, "fp32"),
            model_id=props[KEY_MODEL_ID],
            tokenizer_json=props.get(KEY_TOKENIZER),
            spec=spec,
            gates=_gates(props.get(KEY_GATES), config, source),
        )


def _gates(text: str | None, config: InfiniConfig, source: str) -> list[list[float]] | None:
    """The gates' metadata, checked to be [L][H] numbers."""
    if text is None:
        return None
    L, H = config.num_hidden_layers, config.num_attention_heads
    try:
        gates = json.loads(text)
        ok = len(gates) == L and all(
            len(row) == H and all(isinstance(g, (int, float)) for g in row) for row in gates
        )
    except (ValueError, RecursionError, TypeError):
        ok = False
    if not ok:
        raise ModelFileError(f"{source}: metadata {KEY_GATES!r} is not [{L}][{H}] numbers")
    return gates


def digest(props: Mapping[str, str]) -> str:
    """The metadata digest of the signed keys in `props` (it catches edits, not forgeries)."""
    canonical = json.dumps({k: props[k] for k in SIGNED_KEYS if k in props}, sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def static_dims(config: InfiniConfig, spec: StateSpec) -> dict[str, tuple[int | None, ...]]:
    """Each state input and output's and the logits' shape as the config fixes it (None:
    dynamic)."""
    dims = spec.io_dims()
    return {name: spec.shape(dims[name], config) for name in (*spec.names, *spec.output_names)}


def check_shapes(
    shapes: Mapping[str, Sequence], config: InfiniConfig, source: str, spec: StateSpec
) -> None:
    """Refuse a graph whose fixed dimensions disagree with its config (metadata that does not
    describe the graph). `shapes`: name -> dims, symbolic dims as strings or None."""
    for name, expected in static_dims(config, spec).items():
        got = tuple(shapes.get(name, ()))
        fixed = [(g, e) for g, e in zip(got, expected) if isinstance(g, int) and e is not None]
        if len(got) != len(expected) or any(g != e for g, e in fixed):
            raise ModelFileError(
                f"{source}: {name} has shape {list(got)}, but the config in its metadata says "
                f"{[e if e is not None else '?' for e in expected]}"
            )


def check_io(
    inputs: Collection[str], outputs: Collection[str], source: str, spec: StateSpec
) -> None:
    """Refuse a graph whose input or output names are not its format version's contract."""
    missing = [n for n in spec.input_names if n not in inputs]
    missing += [n for n in spec.output_names if n not in outputs]
    extra = [n for n in inputs if n not in spec.input_names]
    extra += [n for n in outputs if n not in spec.output_names]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ModelFileError(
            f"{source}: not a step graph of format {spec.version}: inputs/outputs differ from "
            f"the contract ({what})"
        )
