"""domainlift: what every stage (finetune/, export/, serve/) and the benchmarks stand on.

    config.py    the job YAML's schema            errors.py   the problems a user can fix (one base class)
    data.py      readers + the domain protocol    tasks.py    task facts: metric, model class, route, inputs
    metrics.py   the metrics of both tasks        training.py the one TrainingArguments builder
    manifest.py  the artifact manifest            runtime.py  run an artifact (ONNX Runtime / PyTorch)
    cli.py       what every command line shares

Importing it puts the Hugging Face libraries and BentoML in offline mode (unless the environment already says
otherwise): everything is local, and nothing may wait on a model hub or telemetry endpoint it cannot reach.
This runs before any of them is imported, because every entry point imports domainlift first.
"""

import os

for _var in (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "BENTOML_DO_NOT_TRACK",
):
    os.environ.setdefault(_var, "1")
