"""MODEL_DIR -> ONNX step graph (needs the `[export]` extra)."""
