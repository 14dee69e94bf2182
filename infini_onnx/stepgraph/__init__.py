"""The step-graph format, on the ground floor: every stage meets through it.

- `names`: tensor names, metadata keys.
- `variants`: the variant table (what each variant is; quantiser, CLI and runtime read it).
- `metadata`: the one writer and reader of a graph's metadata (StepGraphInfo).
- `memory_path`: the rule that finds the float32 memory path.
- `files`: safe (atomic) file writing and the external-data file name.

Pure Python (no numpy, onnx or onnxruntime); docs/design.md describes the format.
"""
