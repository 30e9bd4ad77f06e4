"""The fine-tuning recipe: setup -> (dapt) -> (pretrain) -> train -> evaluate -> save the checkpoint artifact.

    python -m finetune --config configs/sentiment-kitchen.yaml [train.epochs=1 ...] [--resume] [--overwrite]

Runs unchanged under `torchrun --nproc_per_node N -m finetune ...` or `accelerate launch -m finetune ...`:
the Trainer shards batches across processes, and only the main process writes the artifact.

Output (the contract later stages read): artifacts/<job>/checkpoint/ with the model + tokenizer in
Hugging Face format (safetensors), metrics.json and manifest.json, written atomically.
Resumable training state and TensorBoard logs live in artifacts/<job>/run/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer, TrainingArguments

from domainlift import manifest
from domainlift.config import ConfigError, JobConfig, resolve_model_path
from finetune import data as data_mod
from finetune import methods, tasks
from finetune.methods import dapt
from finetune.methods.target import encode_texts

log = logging.getLogger("finetune")
CHECKPOINT = "checkpoint"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")


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


def precision_flags(choice: str) -> dict:
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"  # CPU autocast buys little for BERT-size training and costs accuracy checks
    if choice in ("bf16", "fp16") and not torch.cuda.is_available():
        log.warning("train.precision=%s on CPU: autocast runs, but expect no speed-up over fp32", choice)
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def training_args(cfg: JobConfig, out: Path, metric: str, epochs: float, lr: float) -> TrainingArguments:
    t = cfg.train
    strategy = "steps" if t.eval_steps else "epoch"
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=t.max_steps,
        learning_rate=lr,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=t.eval_steps,
        save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        group_by_length=t.group_by_length,
        length_column_name="length",
        seed=t.seed,
        data_seed=t.seed,
        logging_dir=str(out / "tensorboard"),
        logging_steps=t.logging_steps,
        report_to=["tensorboard"],
        disable_tqdm=False,
        dataloader_num_workers=0,
        # Several CPU processes (torchrun without GPUs) only form a gloo process group with use_cpu.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        **precision_flags(t.precision),
    )


def _trainer(cfg, model, tokenizer, args, train_ds, dev_ds, task, labels, method=None, unlabeled=None) -> Trainer:
    callbacks = []
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    extra = {}
    trainer_class = getattr(method, "Trainer", Trainer)
    if trainer_class is not Trainer:
        extra["method_cfg"] = cfg.method
    if hasattr(method, "target_collator"):  # the objective also trains on unlabeled target text
        extra["target"] = encode_texts(unlabeled, tokenizer, cfg.model.max_length)
        extra["target_collator"] = method.target_collator(tokenizer, cfg)
    return trainer_class(
        **extra,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        data_collator=tasks.collator(task, tokenizer),
        processing_class=tokenizer,
        compute_metrics=tasks.metrics_fn(task, labels),
        callbacks=callbacks,
    )


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint-N the Trainer finished writing (trainer_state.json is written last), so a
    run killed in the middle of a save resumes from the save before it."""
    done = [c for c in Path(run_dir).glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return str(max(done, key=lambda c: int(c.name.rsplit("-", 1)[1]))) if done else None


def _resume_point(run_dir: Path, resume: bool, overwrite: bool):
    last = last_complete_checkpoint(run_dir)
    if resume:
        if last:
            log.info("resuming from %s", last)
            return last
        log.warning("--resume given but %s holds no saved state; starting from scratch", run_dir)
        return None
    if last and not overwrite:
        raise FileExistsError(
            f"{run_dir} holds the state of an earlier run ({Path(last).name}); "
            "pass --resume to continue it or --overwrite to start over"
        )
    return None


def pretrain_key(cfg: JobConfig, start_sha256: str) -> str:
    """What the pre-trained encoder depends on: the starting weights, the pre-training data and every setting
    the phase reads. Jobs with the same key (e.g. one CoNLL pre-training for several CrossNER domains) share it."""
    inputs = {
        "start": start_sha256,
        "data": manifest.parent_info(Path(cfg.pretrain.data))["sha256"],
        "pretrain": dataclasses.asdict(cfg.pretrain),
        "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in ("epochs", "learning_rate")},
        "task": cfg.data.task,
        "max_length": cfg.model.max_length,
        "samples": [cfg.data.seed, cfg.data.max_train_samples, cfg.data.max_eval_samples],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain(cfg: JobConfig, base: Path, tokenizer, run_dir: Path, resume: bool) -> Path:
    """Train on a related labelled dataset first; keep only the encoder (the main phase makes a new head).
    The encoder goes to <output_dir>/pretrain-cache/<key>/, and a later job with the same key reuses it."""
    parent = manifest.parent_info(base)  # hashes the starting weights: once, for the key and the manifest
    key = pretrain_key(cfg, parent["sha256"])
    encoder_dir = Path(cfg.output_dir) / "pretrain-cache" / key
    if (encoder_dir / manifest.MANIFEST).is_file():
        manifest.verify(encoder_dir)
        log.info("pretrain: reusing the encoder pre-trained with the same inputs, %s", encoder_dir)
        return encoder_dir
    task = cfg.data.task
    domain = data_mod.load_domain(cfg.pretrain.data, cfg.data)
    labels = data_mod.label_space(domain["train"], task)
    dev = domain.get("dev", domain["test"])
    dev = data_mod.cap(dev, cfg.data.max_eval_samples, cfg.data.seed)
    train = data_mod.cap(domain["train"], cfg.data.max_train_samples, cfg.data.seed)
    enc_train = tasks.tokenize(train, tokenizer, labels, cfg.model.max_length, task, "pretrain train")
    enc_dev = tasks.tokenize(dev, tokenizer, labels, cfg.model.max_length, task, "pretrain dev")
    model = tasks.model_class(task).from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    out = run_dir / "pretrain"
    args = training_args(cfg, out, tasks.SELECTION_METRIC, cfg.pretrain.epochs, cfg.pretrain.learning_rate)
    trainer = _trainer(cfg, model, tokenizer, args, enc_train, enc_dev, task, labels)
    log.info("pretrain: %d examples from %s, %s epochs", len(enc_train), cfg.pretrain.data, cfg.pretrain.epochs)
    last = last_complete_checkpoint(out) if resume else None
    trainer.train(resume_from_checkpoint=last)
    dev_metrics = _strip(trainer.evaluate(metric_key_prefix="dev"), "dev")  # of the best epoch, loaded back
    if trainer.is_world_process_zero():
        with manifest.atomic_dir(encoder_dir, overwrite=True) as tmp:
            trainer.model.base_model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            manifest.write(
                tmp,
                kind="pretrained-encoder",
                config=cfg.to_dict(),
                parent=parent,
                quality={"task": task, "pretrain_dev": dev_metrics},
                producer="finetune.pretrain",
                key=key,
            )
    trainer.accelerator.wait_for_everyone()
    return encoder_dir


def run(cfg: JobConfig, resume: bool = False, overwrite: bool = False) -> Path | None:
    """Fine-tune per cfg; return the checkpoint directory (None on non-main processes)."""
    resume = resume or cfg.train.resume
    task = cfg.data.task
    job_dir = cfg.job_dir
    ckpt_dir = job_dir / CHECKPOINT
    run_dir = job_dir / "run"
    # --- setup: fail on every bad input before any training time is spent
    if ckpt_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{ckpt_dir} already holds a checkpoint; pass --overwrite to replace it or set job=<new name> to keep both"
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
    labels = splits.labels
    log.info(
        "job %s: %s, method %s, %d train / %d dev / %d test, %d labels, model %s",
        cfg.job,
        task,
        cfg.method.name,
        len(splits.train),
        len(splits.dev),
        len(splits.test),
        len(labels),
        base,
    )

    start = base
    if cfg.method.uses_dapt:
        start = dapt.run(cfg, start, tokenizer, splits.unlabeled, run_dir, precision_flags(cfg.train.precision))
    if cfg.pretrain.data:
        start = pretrain(cfg, start, tokenizer, run_dir, resume)

    enc = {
        name: tasks.tokenize(getattr(splits, name), tokenizer, labels, cfg.model.max_length, task, name)
        for name in ("train", "dev", "test")
    }
    model = tasks.model_class(task).from_pretrained(
        start, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    model = method.prepare(model, cfg, task)

    metric = tasks.MAIN_METRIC[task]
    args = training_args(cfg, run_dir, tasks.SELECTION_METRIC, cfg.train.epochs, cfg.train.learning_rate)
    trainer = _trainer(cfg, model, tokenizer, args, enc["train"], enc["dev"], task, labels, method, splits.unlabeled)

    # --- run
    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=resume_from)
    train_runtime = time.perf_counter() - t0

    # --- evaluate (the best dev model is loaded back by load_best_model_at_end)
    trainer.remove_callback(EarlyStoppingCallback)  # it only reads the in-training eval_* metrics
    dev_metrics = _strip(trainer.evaluate(enc["dev"], metric_key_prefix="dev"), "dev")
    test_pred = trainer.predict(enc["test"], metric_key_prefix="test")
    test_metrics = _strip(test_pred.metrics, "test")
    if task == "token-classification":
        test_metrics["per_type"] = tasks.per_type_report(test_pred.predictions, test_pred.label_ids, labels)

    if not trainer.is_world_process_zero():
        return None
    metrics = {
        "job": cfg.job,
        "task": task,
        "method": cfg.method.name,
        "main_metric": metric,
        "labels": labels,
        "source_dev": dev_metrics,
        "target_test": test_metrics,
        "train_runtime_s": round(train_runtime, 2),
        "train_samples_per_second": round(train_out.metrics.get("train_samples_per_second", 0.0), 3),
        "train_samples": len(enc["train"]),
        "global_steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "peak_memory_mb": peak_memory_mb(),
        "world_size": trainer.args.world_size,
        "device": str(trainer.args.device),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "data": {
            "source": cfg.data.source,
            "target": cfg.data.target,
            "pretrain": cfg.pretrain.data,
            "train": len(splits.train),
            "dev": len(splits.dev),
            "test": len(splits.test),
            "unlabeled_target": len(splits.unlabeled),
        },
    }

    # --- save, atomically
    with manifest.atomic_dir(ckpt_dir, overwrite=overwrite) as tmp:
        final = method.finalize(trainer.model, tmp)
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        manifest.write(
            tmp,
            kind="checkpoint",
            config=cfg.to_dict(),
            parent=manifest.parent_info(base),
            quality={
                "task": task,
                "main_metric": metric,
                "target_test": test_metrics[metric],
                "source_dev": dev_metrics[metric],
            },
            producer="finetune",
        )
    log.info(
        "target test %s = %.4f, source dev %s = %.4f, %.0f s of training -> %s",
        metric,
        test_metrics[metric],
        metric,
        dev_metrics[metric],
        train_runtime,
        ckpt_dir,
    )
    return ckpt_dir


def _strip(metrics: dict, prefix: str) -> dict:
    drop = f"{prefix}_{tasks.SELECTION_METRIC}"  # model selection's internal key, not a metric to report
    return {k[len(prefix) + 1 :]: v for k, v in metrics.items() if k.startswith(prefix + "_") and k != drop}


def peak_memory_mb() -> dict:
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    out = {"cpu_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["gpu_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def setup_logging() -> None:
    # Our stages log at INFO on the main process; libraries (ONNX Runtime's quantizer logs every tensor) at WARNING.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    level = logging.INFO if int(os.environ.get("LOCAL_RANK", "0")) == 0 else logging.WARNING
    for name in ("finetune", "export", "domainlift", "serve", "benchmarks"):
        logging.getLogger(name).setLevel(level)
    transformers.logging.set_verbosity_warning()
