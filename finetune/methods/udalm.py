"""UDALM (Karouzos et al. 2021), as the authors' code runs it: DAPT on the target's unlabeled text first (the
method runs the dapt phase itself), then a mixed objective in which every labelled source batch is followed by k
masked-LM batches of target text, all k + 1 batches weighing the same, so the masked-LM share of the loss follows
the sample ratio (k = unlabeled / labelled texts unless method.udalm.target_batches says otherwise), at the
authors' learning rate of 1e-5. The masked-LM head trained by DAPT carries on (a fresh one, its decoder copied from
the word embeddings, when the start has none). It is attached while training and removed before the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

from finetune.methods.target import TargetTrainer
from finetune.phases import MLM_HEAD, mlm_head_of

log = logging.getLogger(__name__)
# The sample ratio can be huge with few labels and much text; the authors ran 8 masked-LM batches per source batch.
MAX_AUTO_BATCHES = 8


def learning_rate(cfg) -> float:
    return cfg.method.udalm.learning_rate


def mlm_head_for(model) -> nn.Module:
    """The architecture's own masked-LM head: DAPT's trained one when the model's starting directory has it, else a
    new one whose decoder starts as a copy of the word embeddings (a copy, not BERT's tie: the Trainer's checkpoints
    refuse shared tensors)."""
    mlm_model = AutoModelForMaskedLM.from_config(model.config)
    head = mlm_head_of(mlm_model)
    saved = Path(model.name_or_path) / MLM_HEAD
    if saved.is_file():
        head.load_state_dict(load_file(saved))
        log.info("udalm: the masked-LM head trained by DAPT carries on (%s)", saved)
    else:
        mlm_model.get_output_embeddings().weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        log.info("udalm: no DAPT head at %s; a new masked-LM head is initialised from the word embeddings", saved)
    _untie(head)
    return head.to(model.device)


def _untie(module: nn.Module) -> None:
    """Give a parameter registered under two names (BERT's decoder bias is the head's bias) a copy of its own."""
    seen = set()
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if id(p) in seen:
                setattr(sub, name, nn.Parameter(p.detach().clone()))
            seen.add(id(p))


def prepare(model, cfg, task: str):
    model.mlm_head = mlm_head_for(model)
    return model


def finalize(model, out_dir: Path):
    del model.mlm_head
    return model


def target_collator(tokenizer, cfg):
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.method.udalm.mlm_probability)


class Trainer(TargetTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        k = self.method_cfg.udalm.target_batches
        self.k = k or min(MAX_AUTO_BATCHES, max(1, round(len(self.target_dataset) / len(self.train_dataset))))
        log.info("udalm: %d masked-LM target batches after every source batch (masked-LM share %.2f)", self.k,
                 self.k / (1 + self.k))  # fmt: skip

    def task_weight(self) -> float:
        return 1 / (1 + self.k)

    def target_loss(self, model, outputs, target: dict):
        losses = [self._mlm_loss(model, target)] + [
            self._mlm_loss(model, self.target_batch(target["input_ids"].device)) for _ in range(self.k - 1)
        ]
        mlm_loss = sum(losses) / len(losses)
        self.record("mlm_loss", mlm_loss.detach())
        return mlm_loss * self.k / (1 + self.k)

    def _mlm_loss(self, model, batch: dict):
        labels = batch.pop("labels")
        hidden = model.base_model(**batch).last_hidden_state
        masked = labels != -100  # the vocabulary projection only where a token was masked: ~15% of the cost
        scores = model.mlm_head(hidden[masked])
        if not masked.any():  # a batch of very short texts can draw no mask at all
            return scores.sum() * 0.0
        return nn.functional.cross_entropy(scores.float(), labels[masked])
