"""UDALM-style mixed objective (Karouzos et al. 2021): each step adds a masked-LM loss on a batch of unlabeled
target text to the source task loss, so the encoder keeps modelling the target domain while it learns the task.

The default model ships without a masked-LM head: a new one is initialised (its decoder starts as a copy of the
word embeddings, as BERT ties them). It is attached while training and removed before the checkpoint is saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn
from transformers import DataCollatorForLanguageModeling
from transformers.activations import ACT2FN

from finetune.methods.target import TargetTrainer

log = logging.getLogger(__name__)


def mlm_head_for(model) -> nn.Module:
    """BERT's masked-LM head (dense, activation, LayerNorm, decoder to the vocabulary) whose decoder starts as a
    copy of the word embeddings: a copy, not BERT's tie, because the Trainer's checkpoints refuse shared tensors."""
    c = model.config
    embeddings = model.get_input_embeddings().weight
    decoder = nn.Linear(c.hidden_size, c.vocab_size)
    decoder.weight.data.copy_(embeddings.data)
    nn.init.zeros_(decoder.bias)
    head = nn.Sequential(
        nn.Linear(c.hidden_size, c.hidden_size),
        ACT2FN[c.hidden_act],
        nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
        decoder,
    )
    return head.to(embeddings.device)


def prepare(model, cfg, task: str):
    log.info("udalm: the model has no masked-LM head; a new one is initialised from the word embeddings")
    model.mlm_head = mlm_head_for(model)
    return model


def finalize(model, out_dir: Path):
    del model.mlm_head
    return model


def target_collator(tokenizer, cfg):
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.method.udalm.mlm_probability)


class Trainer(TargetTrainer):
    def target_loss(self, model, outputs, target: dict):
        labels = target.pop("labels")
        hidden = model.base_model(**target).last_hidden_state
        masked = labels != -100  # the vocabulary projection only where a token was masked: ~15% of the cost
        scores = model.mlm_head(hidden[masked])
        if masked.any():
            mlm_loss = nn.functional.cross_entropy(scores.float(), labels[masked])
        else:  # a batch of very short texts can draw no mask at all
            mlm_loss = scores.sum() * 0.0
        self.record("mlm_loss", mlm_loss.detach())
        return self.method_cfg.udalm.mlm_weight * mlm_loss
