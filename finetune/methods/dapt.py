"""Domain-adaptive pre-training (DAPT, Gururangan et al. 2020): continued masked-LM training on the target
domain's unlabeled text, before the task fine-tuning starts from the adapted encoder (method.name dapt+<objective>).

The default model ships without a masked-LM head: a new one is initialised, and the log says so. The encoder
keeps the base model's pooler (masked-LM training does not use it), so the task head starts as it would have.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from domainlift import manifest
from finetune.data import DataError, cap
from finetune.methods.target import encode_texts

log = logging.getLogger(__name__)


def run(cfg, base: Path, tokenizer, unlabeled: datasets.Dataset, run_dir: Path, precision: dict) -> Path:
    """Masked-LM training on `unlabeled`; returns the directory of the adapted encoder."""
    c = cfg.method.dapt
    out = run_dir / "dapt"
    encoder_dir = out / "encoder"
    if len(unlabeled) == 0:
        raise DataError(
            "dapt needs unlabeled target text, but the target's train part is empty: "
            "set data.target to a domain with more rows than data.test_size"
        )
    texts = encode_texts(cap(unlabeled, c.max_samples, cfg.data.seed), tokenizer, cfg.model.max_length)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    if any(k.startswith("cls.") for k in info["missing_keys"]):
        log.info("dapt: %s has no masked-LM head; a new one is initialised (decoder tied to the embeddings)", base)
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=c.epochs,
        learning_rate=c.learning_rate,
        per_device_train_batch_size=cfg.train.batch_size,
        weight_decay=cfg.train.weight_decay,
        warmup_ratio=cfg.train.warmup_ratio,
        save_strategy="no",
        logging_steps=cfg.train.logging_steps,
        report_to=[],
        seed=cfg.train.seed,
        dataloader_num_workers=0,
        **precision,
    )
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
        with manifest.atomic_dir(encoder_dir, overwrite=True) as tmp:
            encoder.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    return encoder_dir
