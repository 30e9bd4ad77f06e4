"""The fine-tuning stage: data + a pretrained encoder -> artifacts/<job>/checkpoint/ (python -m finetune)."""

import domainlift  # noqa: F401  first: it puts the Hugging Face libraries in offline mode before any is imported
