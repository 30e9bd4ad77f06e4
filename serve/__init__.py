"""The serving stage: an export variant -> a BentoML service with adaptive batching (python -m serve)."""

import domainlift  # noqa: F401  first: it puts the Hugging Face libraries in offline mode before any is imported
