#!/usr/bin/env bash
# The whole pipeline on a fresh tiny model: init -> export -> quantize -> stream + generate.
set -euo pipefail
work=${1:-build/quickstart}
mkdir -p "$work"

infini init "$work/tiny" --preset tiny
infini export "$work/tiny" "$work/tiny.onnx"
infini quantize "$work/tiny.onnx" "$work/tiny-int8.onnx" --mode int8
# A random model writes noise: this shows the mechanics (stream, memory, generation), not skill.
infini stream "$work/tiny-int8.onnx" README.md --generate 40 --temperature 0 --save-state "$work/readme.state"
infini generate "$work/tiny-int8.onnx" --resume "$work/readme.state" --prompt " More:" --max-new-tokens 20
