"""The aarch64 CI job and its helpers (tests/edge/aarch64.py, docs/edge.md)."""
