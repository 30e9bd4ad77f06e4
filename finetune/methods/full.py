"""Full fine-tuning: every weight of the encoder and the new task head trains."""

from pathlib import Path


def prepare(model, cfg, task: str):
    return model


def finalize(model, out_dir: Path):
    return model
