"""`python -m infini_onnx ...` is the `infini` command (for installs without console scripts,
e.g. `pip install --target`)."""

from infini_onnx.cli import main

main(prog_name="infini")
