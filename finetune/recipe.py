"""The fine-tuning recipe: setup -> phases (dapt, pretrain) -> train -> [self-train rounds] -> evaluate -> save.

    python -m finetune --config configs/sentiment-kitchen.yaml [train.epochs=1 ...] [--resume] [--overwrite]

Runs unchanged under `torchrun --nproc_per_node N -m finetune ...` or `accelerate launch -m finetune ...`:
the Trainer shards batches across processes, and only the main process writes the artifact.

Output (the contract later stages read): artifacts/<job>/checkpoint/ with the model + tokenizer in
Hugging Face format (safetensors), metrics.json and manifest.json, written atomically.
Resumable training state and TensorBoard logs live in artifacts/<job>/run/.
"""

from __future__ import annotations

import hashlib
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
from finetune.methods import self_train as self_train_mod

log = logging.getLogger("finetune")
CHECKPOINT = "checkpoint"
FINGERPRINT = "fingerprint.json"  # in run/: the config and data a resumable run was started with
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
    encoded: dict  # the train / dev / test splits tokenized
    checkpoint_dir: Path
    run_dir: Path
    resume: bool  # continue killed phases from their saved states
    resume_from: str | None  # the main phase's saved Trainer state to continue, or None
    teacher: object | None  # self-training from a given checkpoint (method.self_train.teacher): its model
    fingerprint: dict  # what the run is made of (config sections, data files), recorded with its checkpoint


@dataclass
class Trained:
    """A finished training run: its Trainer (the best dev model loaded back), the method module that trained it,
    and what it cost."""

    trainer: Trainer
    method: ModuleType
    cost: dict  # train_runtime_s, train_samples_per_second, train_samples


def run(cfg: JobConfig, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Fine-tune per cfg; return the checkpoint directory (None on non-main processes). A checkpoint made from the
    same config and data is kept (--overwrite retrains it anyway); one made from another is replaced."""
    resume = resume or cfg.train.resume
    existing = cfg.job_dir / CHECKPOINT
    if not overwrite and not resume and (existing / manifest.MANIFEST).is_file():
        changed = changes_since(existing, cfg)
        if not changed:
            log.info("%s is up to date (same config and data): not fine-tuned again (--overwrite does)", existing)
            return existing
        log.info("fine-tuning again: %s changed since %s was made", ", ".join(changed), existing)
        overwrite = True
    job = setup(cfg, resume, overwrite)
    start = phases.run(cfg, job.base, job.tokenizer, job.splits.unlabeled, job.run_dir, job.resume)
    trained = None if job.teacher else train(job, start, job.method, job.encoded["train"], job.run_dir)
    teaching = {}
    if cfg.method.self_training:
        trained, teaching = self_train(job, start, trained)
    results = {**evaluate(job, trained), **teaching}
    if not trained.trainer.is_world_process_zero():
        return None
    return save(job, trained, results, overwrite)


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
    if cfg.method.objective in methods.LOST_TO_SOURCE_ONLY:
        log.warning(
            "method %s: %s (docs/domain-adaptation.md); kept for experiments. Without target labels, "
            "self-train (a noisy student) is the measured best",
            cfg.method.name,
            methods.LOST_TO_SOURCE_ONLY[cfg.method.objective],
        )
    splits = data_mod.build_splits(cfg.data)
    teacher = None
    if cfg.method.self_training and cfg.method.self_train.teacher:
        teacher = load_teacher(cfg.method.self_train.teacher, splits.labels)
    made_of = fingerprint(cfg)
    resume_from = _resume_point(run_dir, resume, overwrite, made_of)
    if overwrite and not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    if resume_from is None:  # a new run: what it is made of, for a later --resume to check against
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / FINGERPRINT).write_text(json.dumps(made_of, indent=2) + "\n")
    transformers.set_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = {
        name: tasks.tokenize(getattr(splits, name), tokenizer, splits.labels, cfg.model.max_length, cfg.data.task, name)
        for name in ("train", "dev", "test")
    }
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
    return Job(
        cfg, base, method, splits, tokenizer, encoded, checkpoint_dir, run_dir, resume, resume_from, teacher, made_of
    )


def train(job: Job, start: Path, method: ModuleType, train_set, out: Path) -> Trained:
    """`method` on the tokenized `train_set`, starting from `start`, Trainer state in `out`; model selection on the
    source dev set (the best dev model is loaded back)."""
    cfg, task, labels = job.cfg, job.cfg.data.task, job.splits.labels
    model = method.prepare(trainer_mod.task_model(task, start, labels), cfg, task)
    t = cfg.train
    lr = method.learning_rate(cfg) if hasattr(method, "learning_rate") else t.learning_rate  # udalm has its own
    args = training_args(t, out, epochs=t.epochs, learning_rate=lr, select=True)
    trainer = trainer_mod.build(
        cfg, model, job.tokenizer, args, train_set, job.encoded["dev"], labels, method, job.splits.unlabeled
    )
    t0 = time.perf_counter()
    resumed = job.resume_from if out == job.run_dir else None  # self-training students start over
    result = trainer.train(resume_from_checkpoint=resumed)
    trainer.remove_callback(EarlyStoppingCallback)  # it only reads the in-training eval_* metrics
    cost = {
        "train_runtime_s": round(time.perf_counter() - t0, 2),
        "train_samples_per_second": round(result.metrics.get("train_samples_per_second", 0.0), 3),
        "train_samples": len(train_set),
    }
    return Trained(trainer, method, cost)


def self_train(job: Job, start: Path, trained: Trained | None) -> tuple[Trained, dict]:
    """Rounds of: the teacher labels the target's unlabeled text; a fresh student trains on the labelled source
    data plus the confident pseudo-labels and becomes the next teacher. The first teacher is the model just
    trained, or method.self_train.teacher. Returns the last student and a record of the teaching (each round's
    student's test score in it, reported, never selected on)."""
    c, labels, max_length = job.cfg.method.self_train, job.splits.labels, job.cfg.model.max_length
    if trained is None:
        teacher, teacher_test = job.teacher, _recorded_test(Path(c.teacher))
        spent = 0.0
    else:
        teacher = trained.trainer.model
        teacher_test = trainer_mod.strip(
            trained.trainer.predict(job.encoded["test"], metric_key_prefix="t").metrics, "t"
        )
        spent = trained.cost["train_runtime_s"]
    texts = tasks.texts_of(job.splits.unlabeled)
    source_labels = list(job.splits.train["label"])
    record = {"teacher": c.teacher or job.cfg.method.objective, "teacher_target_test": teacher_test, "rounds": []}
    for r in range(1, c.rounds + 1):
        t0 = time.perf_counter()
        logits = self_train_mod.predict_logits(teacher, job.tokenizer, texts, max_length)
        pseudo, info = self_train_mod.pseudo_labelled(logits, texts, labels, source_labels, c)
        data = self_train_mod.student_data(job.encoded["train"], pseudo, job.tokenizer, labels, max_length)
        labelling_s = time.perf_counter() - t0
        log.info("self-train round %d of %d: a student on %d labelled + %d pseudo-labelled texts", r, c.rounds,
                 len(job.encoded["train"]), len(pseudo))  # fmt: skip
        trained = train(job, start, self_train_mod, data, job.run_dir / f"self-train-{r}")
        spent += labelling_s + trained.cost["train_runtime_s"]
        test = trained.trainer.predict(
            job.encoded["test"], metric_key_prefix="t"
        ).metrics  # reported, never selected on
        record["rounds"].append(
            {**info, "labelling_s": round(labelling_s, 1), "target_test": trainer_mod.strip(test, "t")}
        )
        teacher = trained.trainer.model
    trained.cost["train_runtime_s"] = round(spent, 2)  # the teacher (when trained here), labelling and students
    return trained, record


def load_teacher(path: str, labels: list[str]):
    """A checkpoint to label with: verified, and predicting this job's labels."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"method.self_train.teacher {root} does not exist; point it at a checkpoint directory")
    manifest.verify(root)
    config = json.loads((root / "config.json").read_text())
    theirs = [config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {})))]
    if theirs != labels:
        raise ConfigError(
            f"method.self_train.teacher {root} predicts the labels {theirs}, but this job's are {labels}: "
            "point it at a checkpoint fine-tuned for this task"
        )
    return tasks.model_class("text-classification").from_pretrained(root)


def _recorded_test(root: Path) -> dict:
    metrics_file = root / "metrics.json"
    return json.loads(metrics_file.read_text()).get("target_test", {}) if metrics_file.is_file() else {}


def evaluate(job: Job, trained: Trained) -> dict:
    """Dev and target-test metrics of the kept model, and what the run cost."""
    cfg, task, labels, encoded, trainer = job.cfg, job.cfg.data.task, job.splits.labels, job.encoded, trained.trainer
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
        **trained.cost,
        "global_steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "peak_memory_mb": peak_memory_mb(),
        "world_size": trainer.args.world_size,
        "device": str(trainer.args.device),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
        "data": {
            "source": data_mod.domain_path(cfg.data.source),
            "target": data_mod.domain_path(cfg.data.target),
            "unlabeled_files": list(cfg.data.unlabeled),
            "pretrain": cfg.pretrain.data,
            "train": len(job.splits.train),
            "dev": len(job.splits.dev),
            "test": len(job.splits.test),
            "unlabeled_target": len(job.splits.unlabeled),
        },
    }


def save(job: Job, trained: Trained, results: dict, overwrite: bool) -> Path:
    """The checkpoint artifact, atomically: model + tokenizer, metrics.json, manifest.json."""
    cfg, metric = job.cfg, results["main_metric"]
    with manifest.atomic_dir(job.checkpoint_dir, overwrite=overwrite) as tmp:
        final = trained.method.finalize(trained.trainer.model, tmp)
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
            fingerprint=job.fingerprint,
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


def fingerprint(cfg: JobConfig) -> dict:
    """What a run is made of: a hash of each config section that shapes training, and of each data file."""

    def sha(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def files(path) -> str:
        p = Path(path)
        return manifest.file_sha256(p)[:16] if p.is_file() else manifest.digest(manifest.hash_files(p))[:16]

    sections = cfg.finetuning_settings()
    d = cfg.data
    paths = [data_mod.domain_path(d.source), data_mod.domain_path(d.target)]
    paths += [item["path"] if isinstance(item, dict) else item for item in d.unlabeled]
    paths += [cfg.pretrain.data] if cfg.pretrain.data else []
    return {
        "config": {k: sha(v) for k, v in sections.items()},
        "data": {p: files(p) for p in paths if Path(p).exists()},
    }


def changes_since(checkpoint: Path, cfg: JobConfig) -> list[str]:
    """What differs between the config and data a checkpoint was made from and cfg's ([] = up to date)."""
    then = manifest.read(checkpoint).get("fingerprint")
    if then is None:
        return ["the checkpoint's recorded inputs (it predates fingerprints)"]
    return _changed(then, fingerprint(cfg))


def _changed(then: dict, now: dict) -> list[str]:
    """The config sections and data files whose hashes differ between two fingerprints (added or gone included)."""
    return [
        f"{part} {k}"
        for part in now
        for k in {**now[part], **then.get(part, {})}
        if then.get(part, {}).get(k) != now[part].get(k)
    ]


def _resume_point(run_dir: Path, resume: bool, overwrite: bool, now: dict) -> str | None:
    last = trainer_mod.last_complete_checkpoint(run_dir)
    if resume:
        if last:
            recorded = run_dir / FINGERPRINT
            then = json.loads(recorded.read_text()) if recorded.is_file() else now
            changed = _changed(then, now)
            if changed:
                raise ConfigError(
                    f"--resume: {run_dir} was started with another config or data ({', '.join(changed)} changed "
                    "since); resume with what it started with, or pass --overwrite to start over"
                )
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
