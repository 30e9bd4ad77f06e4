"""The export stage: checkpoint -> verified ONNX / quantized / pruned variants + report + best (python -m export)."""

import domainlift  # noqa: F401  first: it puts the Hugging Face libraries in offline mode before any is imported
