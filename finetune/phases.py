"""The phases before the task fine-tuning. Each returns the encoder directory the next one starts from:

    dapt      masked-LM training on the target domain's unlabeled text (method.name dapt+<objective>)
    pretrain  training on a related labelled dataset (pretrain.data, e.g. CoNLL-2003 before a CrossNER domain)

They are phases, not methods: any objective in finetune/methods/ trains after them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import datasets
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer

from domainlift import data as data_mod
from domainlift import manifest, tasks
from domainlift.config import JobConfig
from domainlift.errors import DataError
from domainlift.training import training_args
from finetune import trainer as trainer_mod

MLM_HEAD = "mlm_head.safetensors"  # beside a DAPT encoder: its trained masked-LM head

log = logging.getLogger(__name__)


def run(cfg: JobConfig, base: Path, tokenizer, unlabeled: datasets.Dataset, run_dir: Path, resume: bool) -> Path:
    """The phases the job asks for, in order; `base` itself when it asks for none."""
    start = base
    if cfg.method.uses_dapt:
        start = dapt(cfg, start, tokenizer, unlabeled, run_dir)
    if cfg.pretrain.data:
        start = pretrain(cfg, start, tokenizer, run_dir, resume)
    return start


def dapt(cfg: JobConfig, base: Path, tokenizer, unlabeled: datasets.Dataset, run_dir: Path) -> Path:
    """Domain-adaptive pre-training (Gururangan et al. 2020): masked-LM training on `unlabeled`.

    The default model ships without a masked-LM head: a new one is initialised, and the log says so. The encoder
    keeps the base model's pooler (masked-LM training does not use it), so the task head starts as it would have;
    the trained masked-LM head is kept beside it (MLM_HEAD), for objectives that go on with it (udalm).
    The result goes to <output_dir>/dapt-cache/<key>/ and every job with the same inputs reuses it."""
    c = cfg.method.dapt
    if len(unlabeled) == 0:
        raise DataError(
            "dapt needs unlabeled target text, but the target's train part is empty: "
            "set data.target to a domain with more rows than data.test_size"
        )
    corpus = data_mod.cap(unlabeled, c.max_samples, cfg.data.seed)
    parent = manifest.parent_info(base)
    key = _key(
        start=parent["sha256"],
        corpus=hashlib.sha256("\x1e".join(tasks.texts_of(corpus)).encode()).hexdigest(),
        dapt=dataclasses.asdict(c),
        train=_train_settings(cfg),
        max_length=cfg.model.max_length,
    )
    encoder_dir = Path(cfg.output_dir) / "dapt-cache" / key
    if (encoder_dir / manifest.MANIFEST).is_file():
        manifest.verify(encoder_dir)
        log.info("dapt: reusing the encoder adapted with the same inputs, %s", encoder_dir)
        return encoder_dir
    log.info("dapt: starting (an interrupted DAPT starts over: its state is not saved, a finished one is cached)")
    texts = tasks.encode_texts(corpus, tokenizer, cfg.model.max_length)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    if any(not k.startswith(model.base_model_prefix) for k in info["missing_keys"]):
        log.info("dapt: %s has no masked-LM head; a new one is initialised (decoder tied to the embeddings)", base)
    out = run_dir / "dapt"
    args = training_args(cfg.train, out, epochs=c.epochs, learning_rate=c.learning_rate, select=False)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=c.mlm_probability)
    trainer = Trainer(model=model, args=args, train_dataset=texts, data_collator=collator)
    log.info("dapt: masked-LM training on %d unlabeled target texts, %s epochs", len(texts), c.epochs)
    result = trainer.train()
    log.info("dapt: final masked-LM training loss %.4f", result.training_loss)
    if trainer.is_world_process_zero():
        encoder = AutoModel.from_pretrained(base)  # the base's pooler; every other weight comes from DAPT
        missing, _ = encoder.load_state_dict(trainer.model.base_model.state_dict(), strict=False)
        if any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"dapt: the adapted encoder lacks weights the base has: {missing}")
        head = {k: v.detach().clone().contiguous() for k, v in mlm_head_of(trainer.model).state_dict().items()}
        with manifest.atomic_dir(encoder_dir, overwrite=True) as tmp:
            encoder.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            save_file(head, tmp / MLM_HEAD)
            manifest.write(
                tmp,
                kind="dapt-encoder",
                config=cfg.to_dict(),
                parent=parent,
                quality={"mlm_train_loss": result.training_loss, "texts": len(texts)},
                producer="finetune.dapt",
                key=key,
            )
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(out, ignore_errors=True)  # its TensorBoard log went with it; the loss is in the manifest
    return encoder_dir


def mlm_head_of(masked_lm_model):
    """The masked-LM head of an AutoModelForMaskedLM (BERT: `cls`; RoBERTa: `lm_head`): its child that is not the
    encoder."""
    prefix = masked_lm_model.base_model_prefix
    return next(module for name, module in masked_lm_model.named_children() if name != prefix)


def _train_settings(cfg: JobConfig) -> dict:
    """The train: settings a phase reads besides its own epochs and learning rate."""
    return {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in ("epochs", "learning_rate")}


def _key(**inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_key(cfg: JobConfig, start_sha256: str) -> str:
    """What the pre-trained encoder depends on: the starting weights, the pre-training data and every setting
    the phase reads. Jobs with the same key (e.g. one CoNLL pre-training for several CrossNER domains) share it."""
    return _key(
        start=start_sha256,
        data=manifest.parent_info(Path(cfg.pretrain.data))["sha256"],
        pretrain=dataclasses.asdict(cfg.pretrain),
        train=_train_settings(cfg),
        task=cfg.data.task,
        max_length=cfg.model.max_length,
        samples=[cfg.data.seed, cfg.data.max_train_samples, cfg.data.max_eval_samples],
    )


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
    model = trainer_mod.task_model(task, base, labels)
    out = run_dir / "pretrain"
    args = training_args(
        cfg.train, out, epochs=cfg.pretrain.epochs, learning_rate=cfg.pretrain.learning_rate, select=True
    )
    trainer = trainer_mod.build(cfg, model, tokenizer, args, enc_train, enc_dev, labels)
    log.info("pretrain: %d examples from %s, %s epochs", len(enc_train), cfg.pretrain.data, cfg.pretrain.epochs)
    last = trainer_mod.last_complete_checkpoint(out) if resume else None
    trainer.train(resume_from_checkpoint=last)
    dev_metrics = trainer_mod.strip(trainer.evaluate(metric_key_prefix="dev"), "dev")  # the best epoch, loaded back
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
