"""`infini bench`: infini-onnx against what users would otherwise run, in one run on one machine.

Systems: infini-onnx through ONNX Runtime (fp32, int8, int4), the project's PyTorch reference,
infini-transformer-pytorch at a matched parameter count, and a full-attention Llama with a
growing KV cache through ONNX Runtime. See benchmarks/README.md.
"""
