"""The fine-tuning recipe, in five steps: setup -> phases (dapt, pretrain) -> train -> evaluate -> save.

    python -m finetune --config configs/sentiment-kitchen.yaml [train.epochs=1 ...] [--resume] [--overwrite]

Runs unchanged under `torchrun --nproc_per_node N -m finetune ...` or `accelerate launch -m finetune ...`:
the Trainer shards batches across processes, and only the main process writes the artifact.

Output (the contract later stages read): artifacts/<job>/checkpoint/ with the model + tokenizer in
Hugging Face format (safetensors), metrics.json and manifest.json, written atomically.
Resumable training state and TensorBoard logs live in artifacts/<job>/run/.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import transformers
from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer

from domainlift import data as data_mod
from domainlift import manifest, metrics, tasks
from domainlift.config import JobConfig, resolve_model_path
from domainlift.errors import ArtifactExistsError, ConfigError
from domainlift.training import training_args
from finetune import methods, phases
from finetune import trainer as trainer_mod

log = logging.getLogger("finetune")
CHECKPOINT = "checkpoint"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass
class Job:
    """What setup checked and loaded, for the steps after it."""

    cfg: JobConfig
    base: Path  # the pretrained model directory
    method: ModuleType  # the objective's module in finetune/methods
    splits: data_mod.Splits
    tokenizer: object
    checkpoint_dir: Path
    run_dir: Path
    resume: bool  # continue killed phases from their saved states
    resume_from: str | None  # the main phase's saved Trainer state to continue, or None


def run(cfg: JobConfig, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Fine-tune per cfg; return the checkpoint directory (None on non-main processes)."""
    job = setup(cfg, resume or cfg.train.resume, overwrite)
    start = phases.run(cfg, job.base, job.tokenizer, job.splits.unlabeled, job.run_dir, job.resume)
    trainer, encoded, cost = train(job, start)
    results = evaluate(job, trainer, encoded, cost)
    if not trainer.is_world_process_zero():
        return None
    return save(job, trainer, results, overwrite)


def setup(cfg: JobConfig, resume: bool, overwrite: bool) -> Job:
    """Fail on every bad input before any training time is spent; load data and tokenizer."""
    checkpoint_dir = cfg.job_dir / CHECKPOINT
    run_dir = cfg.job_dir / "run"
    if checkpoint_dir.exists() and not overwrite:
        raise ArtifactExistsError(
            f"{checkpoint_dir} already holds a checkpoint; pass --overwrite to replace it "
            "or set job=<new name> to keep both"
        )
    base = resolve_model_path(cfg)
    check_model_dir(base)
    method = methods.get(cfg.method.objective)
    splits = data_mod.build_splits(cfg.data)
    resume_from = _resume_point(run_dir, resume, overwrite)
    if overwrite and not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    transformers.set_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    log.info(
        "job %s: %s, method %s, %d train / %d dev / %d test, %d labels, model %s",
        cfg.job,
        cfg.data.task,
        cfg.method.name,
        len(splits.train),
        len(splits.dev),
        len(splits.test),
        len(splits.labels),
        base,
    )
    return Job(cfg, base, method, splits, tokenizer, checkpoint_dir, run_dir, resume, resume_from)


def train(job: Job, start: Path) -> tuple[Trainer, dict, dict]:
    """The objective on the labelled training data, starting from `start`; the best dev model is loaded back.
    Returns the trainer, the tokenized splits, and the training's wall time and throughput."""
    cfg, task, labels = job.cfg, job.cfg.data.task, job.splits.labels
    encoded = {
        name: tasks.tokenize(getattr(job.splits, name), job.tokenizer, labels, cfg.model.max_length, task, name)
        for name in ("train", "dev", "test")
    }
    model = job.method.prepare(trainer_mod.task_model(task, start, labels), cfg, task)
    t = cfg.train
    args = training_args(t, job.run_dir, epochs=t.epochs, learning_rate=t.learning_rate, select=True)
    trainer = trainer_mod.build(
        cfg, model, job.tokenizer, args, encoded["train"], encoded["dev"], labels, job.method, job.splits.unlabeled
    )
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=job.resume_from)
    cost = {
        "train_runtime_s": round(time.perf_counter() - t0, 2),
        "train_samples_per_second": round(out.metrics.get("train_samples_per_second", 0.0), 3),
    }
    return trainer, encoded, cost


def evaluate(job: Job, trainer: Trainer, encoded: dict, cost: dict) -> dict:
    """Dev and target-test metrics of the kept model, and what the run cost."""
    cfg, task, labels = job.cfg, job.cfg.data.task, job.splits.labels
    trainer.remove_callback(EarlyStoppingCallback)  # it only reads the in-training eval_* metrics
    dev_metrics = trainer_mod.strip(trainer.evaluate(encoded["dev"], metric_key_prefix="dev"), "dev")
    test_pred = trainer.predict(encoded["test"], metric_key_prefix="test")
    test_metrics = trainer_mod.strip(test_pred.metrics, "test")
    if task == "token-classification":
        test_metrics["per_type"] = metrics.per_type_report(test_pred.predictions, test_pred.label_ids, labels)
    return {
        "job": cfg.job,
        "task": task,
        "method": cfg.method.name,
        "main_metric": tasks.MAIN_METRIC[task],
        "labels": labels,
        "source_dev": dev_metrics,
        "target_test": test_metrics,
        **cost,
        "train_samples": len(encoded["train"]),
        "global_steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "peak_memory_mb": peak_memory_mb(),
        "world_size": trainer.args.world_size,
        "device": str(trainer.args.device),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
        "data": {
            "source": cfg.data.source,
            "target": cfg.data.target,
            "pretrain": cfg.pretrain.data,
            "train": len(job.splits.train),
            "dev": len(job.splits.dev),
            "test": len(job.splits.test),
            "unlabeled_target": len(job.splits.unlabeled),
        },
    }


def save(job: Job, trainer: Trainer, results: dict, overwrite: bool) -> Path:
    """The checkpoint artifact, atomically: model + tokenizer, metrics.json, manifest.json."""
    cfg, metric = job.cfg, results["main_metric"]
    with manifest.atomic_dir(job.checkpoint_dir, overwrite=overwrite) as tmp:
        final = job.method.finalize(trainer.model, tmp)
        final.save_pretrained(tmp, safe_serialization=True)
        job.tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        manifest.write(
            tmp,
            kind="checkpoint",
            config=cfg.to_dict(),
            parent=manifest.parent_info(job.base),
            quality={
                "task": cfg.data.task,
                "main_metric": metric,
                "target_test": results["target_test"][metric],
                "source_dev": results["source_dev"][metric],
            },
            producer="finetune",
        )
    log.info(
        "target test %s = %.4f, source dev %s = %.4f, %.0f s of training -> %s",
        metric,
        results["target_test"][metric],
        metric,
        results["source_dev"][metric],
        results["train_runtime_s"],
        job.checkpoint_dir,
    )
    return job.checkpoint_dir


def check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ConfigError(
            f"model.path {path} is not a directory; point it at a local Hugging Face model "
            "(config.json + weights + tokenizer), or leave it null for all-MiniLM-L6-v2"
        )
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _WEIGHTS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in _TOKENIZER):
        missing.append("a tokenizer (tokenizer.json or vocab.txt)")
    if missing:
        raise ConfigError(
            f"model directory {path} lacks {', '.join(missing)}; save the model with "
            "save_pretrained() and its tokenizer with tokenizer.save_pretrained() into it"
        )


def _resume_point(run_dir: Path, resume: bool, overwrite: bool) -> str | None:
    last = trainer_mod.last_complete_checkpoint(run_dir)
    if resume:
        if last:
            log.info("resuming from %s", last)
            return last
        log.warning("--resume given but %s holds no saved state; starting from scratch", run_dir)
        return None
    if last and not overwrite:
        raise ArtifactExistsError(
            f"{run_dir} holds the state of an earlier run ({Path(last).name}); "
            "pass --resume to continue it or --overwrite to start over"
        )
    return None


def peak_memory_mb() -> dict:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    out = {"cpu_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["gpu_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
