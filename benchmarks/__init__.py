"""Benchmarks over the stages: latency, load tests, service comparison, the domain-adaptation matrix."""

import domainlift  # noqa: F401  first: it puts the Hugging Face libraries in offline mode before any is imported
