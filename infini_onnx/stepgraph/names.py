"""The step graph's metadata keys and node-name prefix (docs/design.md, "The step graph"); its
tensors and format versions are stepgraph/state_spec.py's.

Every stage spells these names through this module. Pure Python.
"""

# Metadata keys (ONNX metadata_props, all values strings).
KEY_FORMAT_VERSION = "infini.format_version"
KEY_CONFIG = "infini.config"  # the whole config.json
KEY_VARIANT = "infini.variant"  # a name of the variant table (variants.py)
KEY_TOKENIZER = "infini.tokenizer"  # tokenizer.json text, when the model directory has one
KEY_MODEL_ID = "infini.model_id"  # sha256 of config and source weights: the model's identity
KEY_GATES = "infini.gates"  # the gate logit of every layer's heads, [L][H] (`infini inspect`)
KEY_DIGEST = "infini.metadata_digest"  # sha256 of the keys above: catches edits

# Prefix of the names of the memory-path nodes (see memory_path.py).
MEMORY_PREFIX = "infini_memory/"
