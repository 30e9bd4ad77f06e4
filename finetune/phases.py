"""The phases before the task fine-tuning. Each returns the encoder directory the next one starts from:

    dapt      masked-LM or SimCSE training on the target domain's unlabeled text (method.name dapt+<objective>)
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
    """Domain-adaptive pre-training on `unlabeled`: masked-LM training (Gururangan et al. 2020), or unsupervised
    SimCSE with method.dapt.objective simcse.

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
    out = run_dir / "dapt"
    if c.objective == "simcse":
        trainer, trained, head = _simcse(cfg, base, tasks.texts_of(corpus), out)
    else:
        trainer, trained, head = _masked_lm(cfg, base, tokenizer, corpus, out)
    result = trainer.train()
    log.info("dapt: final %s training loss %.4f", c.objective, result.training_loss)
    if trainer.is_world_process_zero():
        encoder = AutoModel.from_pretrained(base)  # the base's pooler; every other weight comes from DAPT
        missing, _ = encoder.load_state_dict(trained.state_dict(), strict=False)
        if any(not k.startswith("pooler.") for k in missing):
            raise RuntimeError(f"dapt: the adapted encoder lacks weights the base has: {missing}")
        with manifest.atomic_dir(encoder_dir, overwrite=True) as tmp:
            encoder.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if head is not None:
                save_file({k: v.detach().clone().contiguous() for k, v in head.state_dict().items()}, tmp / MLM_HEAD)
            manifest.write(
                tmp,
                kind="dapt-encoder",
                config=cfg.to_dict(),
                parent=parent,
                quality={f"{c.objective}_train_loss": result.training_loss, "texts": len(corpus)},
                producer="finetune.dapt",
                key=key,
            )
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(out, ignore_errors=True)  # its TensorBoard log went with it; the loss is in the manifest
    return encoder_dir


def _masked_lm(cfg: JobConfig, base: Path, tokenizer, corpus: datasets.Dataset, out: Path):
    """A Trainer for masked-LM training on `corpus`, the encoder it trains and its masked-LM head."""
    c = cfg.method.dapt
    texts = tasks.encode_texts(corpus, tokenizer, cfg.model.max_length)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    if any(not k.startswith(model.base_model_prefix) for k in info["missing_keys"]):
        log.info("dapt: %s has no masked-LM head; a new one is initialised (decoder tied to the embeddings)", base)
    args = training_args(cfg.train, out, epochs=c.epochs, learning_rate=c.learning_rate, select=False)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=c.mlm_probability)
    log.info("dapt: masked-LM training on %d unlabeled target texts, %s epochs", len(texts), c.epochs)
    trainer = Trainer(model=model, args=args, train_dataset=texts, data_collator=collator)
    return trainer, model.base_model, mlm_head_of(model)


def _simcse(cfg: JobConfig, base: Path, texts: list[str], out: Path):
    """A Trainer for unsupervised SimCSE on `texts` (sentence-transformers' recipe: each text paired with itself,
    MultipleNegativesRankingLoss, whose scale 20 is SimCSE's temperature 0.05; mean pooling, as the default model
    was trained), the encoder it trains, and no head. Batches hold no text twice: a copy would be a false negative."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses, models
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    c = cfg.method.dapt
    word = models.Transformer(str(base), max_seq_length=cfg.model.max_length)
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")])
    args = training_args(
        cfg.train, out, epochs=c.epochs, learning_rate=c.learning_rate, select=False,
        kind=SentenceTransformerTrainingArguments,
    )  # fmt: skip
    args.batch_sampler = BatchSamplers.NO_DUPLICATES
    args.group_by_length = False  # its own sampler batches; the texts carry no length column
    pairs = datasets.Dataset.from_dict({"anchor": texts, "positive": texts})
    loss = losses.MultipleNegativesRankingLoss(model)
    log.info("dapt: SimCSE on %d unlabeled target texts, %s epochs", len(texts), c.epochs)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss), word.auto_model, None


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
