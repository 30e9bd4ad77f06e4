"""The real all-MiniLM-L6-v2 on small slices of the real data: both tasks, both methods, through the CLI.

Each run is a few dozen optimizer steps on an easy slice; the assertion is that the model learned
something (beats chance by a margin), not a benchmark figure — those come from the full jobs.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import CHECKPOINT_FILES as FILES
from conftest import CROSSNER, KITCHEN, ROOT, write_config

from domainlift import manifest

pytestmark = pytest.mark.slow

ADAPTER = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md"}


def _finetune(cfg_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "finetune", "--config", str(cfg_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ckpt = cfg_path.parent / "artifacts/t/checkpoint"
    manifest.verify(ckpt)
    return ckpt, json.loads((ckpt / "metrics.json").read_text())


def _files(d):
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize("method,lr", [("full", 5e-5), ("lora", 2e-3)])
def test_sentiment_minilm_learns(tmp_path, method, lr):
    cfg = write_config(
        tmp_path,
        data={"source": KITCHEN, "target": KITCHEN, "max_train_samples": 320, "max_eval_samples": 100},
        model={"max_length": 96},
        method={"name": method},
        train={"epochs": 2, "batch_size": 16, "learning_rate": lr},
    )
    ckpt, m = _finetune(cfg)
    assert _files(ckpt) == (FILES | ADAPTER if method == "lora" else FILES)
    assert m["method"] == method and m["data"]["test"] == 100
    # Chance is 0.5 on the balanced test slice; the full 1400-example job reaches ~0.9+.
    assert m["target_test"]["accuracy"] >= 0.7, m["target_test"]
    assert m["target_test"]["macro_f1"] >= 0.65


@pytest.mark.parametrize("method,lr", [("full", 1e-4), ("lora", 1e-3)])
def test_ner_minilm_learns(tmp_path, method, lr):
    conll = str(CROSSNER / "conll2003")
    cfg = write_config(
        tmp_path,
        data={
            "task": "token-classification",
            "source": conll,
            "target": conll,
            "max_train_samples": 600,
            "max_eval_samples": 150,
        },
        model={"max_length": 64},
        method={"name": method},
        train={"epochs": 2, "batch_size": 16, "learning_rate": lr},
    )
    ckpt, m = _finetune(cfg)
    assert _files(ckpt) == (FILES | ADAPTER if method == "lora" else FILES)
    # Entity-level F1 of an untrained tagger is ~0; per-type rows come from seqeval.
    assert m["target_test"]["f1"] >= 0.2, m["target_test"]
    assert {"person", "location", "organisation", "misc"} <= set(m["target_test"]["per_type"])
