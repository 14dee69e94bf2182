"""The step graph's names: tensors, metadata keys, variants (docs/design.md, "The step graph").

Every stage spells these names through this module. Pure Python.
"""

FORMAT_VERSION = 1

# Metadata keys (ONNX metadata_props, all values strings).
KEY_FORMAT_VERSION = "infini.format_version"
KEY_CONFIG = "infini.config"  # the whole config.json
KEY_VARIANT = "infini.variant"  # fp32 | fp16 | int8 | int8-static | int4
KEY_TOKENIZER = "infini.tokenizer"  # tokenizer.json text, when the model directory has one
KEY_MODEL_ID = "infini.model_id"  # sha256 of config and source weights: the model's identity
KEY_DIGEST = "infini.metadata_digest"  # sha256 of the keys above: catches edits

# The compressive memory and its accumulators: float32 in every variant. The order is M, z,
# then their accumulators (matrix, vector, matrix, vector): code may rely on it.
MEMORY_INPUTS = ("memory", "norm", "memory_acc", "norm_acc")
# The local-attention cache of the current segment: the model's dtype.
CACHE_INPUTS = ("past_key", "past_value")
# What a stream carries between calls, in the order of a State's fields.
STATE_TENSORS = MEMORY_INPUTS + CACHE_INPUTS

INPUT_NAMES = ("input_ids", *CACHE_INPUTS, *MEMORY_INPUTS, "num_logits")
MEMORY_OUTPUTS = ("memory_acc_out", "norm_acc_out")
CACHE_OUTPUTS = ("present_key", "present_value")
OUTPUT_NAMES = ("logits", *CACHE_OUTPUTS, *MEMORY_OUTPUTS)
# Inputs and outputs that stay float32 whatever the variant.
FLOAT32_IO = (*MEMORY_INPUTS, *MEMORY_OUTPUTS, "logits")

# Output axes the exporter names (the tracer would name them with expressions).
OUTPUT_DIMS = {
    "logits": {1: "logits_len"},
    "present_key": {3: "present_len"},
    "present_value": {3: "present_len"},
}

# Prefix of the names of the memory-path nodes (see memory_path.py).
MEMORY_PREFIX = "infini_memory/"
