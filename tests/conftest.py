"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) and job configs written to tmp dirs."""

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# Tests never touch the user's ~/bentoml: models and bentos go to a store of their own.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="domainlift-test-bentoml-")

ROOT = Path(__file__).resolve().parent.parent
KITCHEN = str(ROOT / "data/amazon-reviews/kitchen.jsonl")
BOOKS = str(ROOT / "data/amazon-reviews/books.jsonl")
CROSSNER = ROOT / "data/crossner"
# The checkpoint contract: exactly these files (plus adapter/ for LoRA).
CHECKPOINT_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "metrics.json",
    "manifest.json",
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's real tokenizer: fast, no downloads."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from domainlift.config import default_model_path

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)  # the same random weights in every run, whatever ran before
    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_config(path: Path, **sections) -> Path:
    """Write a job YAML: `sections` are nested dicts merged over a small, fast base job."""
    base = {
        "job": "t",
        "output_dir": str(path / "artifacts"),
        "data": {
            "task": "text-classification",
            "source": KITCHEN,
            "target": KITCHEN,
            "max_train_samples": 48,
            "max_eval_samples": 32,
        },
        "model": {"max_length": 64},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "logging_steps": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    cfg_path = path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    return cfg_path


FILLER = "the a this that in to product item thing it works arrived box kitchen cup pan".split()


def write_easy_sentiment(path: Path, n: int = 480) -> None:
    """Sentiment carried by one keyword ("excellent" / "terrible"): a 2-layer BERT learns it in a few epochs."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        words = rng.sample(FILLER, 6)
        words.insert(rng.randrange(6), "excellent" if label == "positive" else "terrible")
        rows.append({"text": " ".join(words), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


CITIES = ["Paris", "London", "Berlin", "Madrid"]


def write_easy_ner(path: Path, n: int = 400) -> None:
    """CoNLL sentences where a city name is a location, sometimes two words ("New York"): learnable in minutes."""
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 5)]
        city = (
            [("New", "B-location"), ("York", "I-location")]
            if rng.random() < 0.3
            else [(rng.choice(CITIES), "B-location")]
        )
        at = rng.randrange(len(words) + 1)
        words[at:at] = city
        lines += [f"{w}\t{t}" for w, t in words] + [""]
    path.write_text("\n".join(lines) + "\n")


def write_easy_job(path: Path, model_dir: Path, task: str = "text-classification", **sections) -> Path:
    """A job that trains the tiny BERT on an easy synthetic task (keyword sentiment, or cities as locations),
    so that a few epochs give a model whose answers mean something; `sections` are merged over it."""
    if task == "text-classification":
        data, test_size, epochs = path / "easy.jsonl", 80, 4
        write_easy_sentiment(data)
    else:
        data, test_size, epochs = path / "cities.txt", 60, 6
        write_easy_ner(data)
    job = {
        "model": {"path": str(model_dir), "max_length": 32},
        "data": {
            "task": task,
            "source": str(data),
            "target": str(data),
            "test_size": test_size,
            "dev_size": 40,
            "max_train_samples": None,
            "max_eval_samples": None,
        },
        "train": {"epochs": epochs, "learning_rate": 3e-3, "batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            job.setdefault(key, {}).update(value)
        else:
            job[key] = value
    return write_config(path, **job)
