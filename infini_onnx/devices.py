"""The devices a step graph runs on, and the ONNX Runtime execution providers of each (pure data:
the CLI lists them without importing onnxruntime)."""

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
DEVICES = tuple(PROVIDERS)
