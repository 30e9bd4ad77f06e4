"""The re-adaptation loop above the stages: captured traffic -> adapt -> export -> gate -> promote (make readapt)."""

import domainlift  # noqa: F401  first: it puts the Hugging Face libraries in offline mode before any is imported
