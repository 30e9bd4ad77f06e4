"""Entropy minimisation on unlabeled target batches, with a class-balance term (the information-maximisation loss
of SHOT, Liang et al. 2020; entropy minimisation: Grandvalet & Bengio 2005). Next to each labelled source batch,
the model predicts an unlabeled target batch and is pushed to be confident on it (the mean entropy of its
predictions falls), so its decision boundary moves out of the dense regions of the target's text, while the batch's
mean prediction is held near the source's class shares (KL divergence), which keeps confidence from collapsing
onto one class. The term's weight rises from 0 as DANN's does: an untrained head's confidence means nothing.

Nothing is added to the model: the saved checkpoint is the plain task model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from finetune.methods.target import TargetTrainer, ramp


def prepare(model, cfg, task: str):
    return model


def finalize(model, out_dir: Path):
    return model


def target_collator(tokenizer, cfg):
    return DataCollatorWithPadding(tokenizer)


def information_loss(logits: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean entropy of the predictions, KL(mean prediction || prior)), both in nats."""
    probs = logits.float().softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-8).log()).sum(-1).mean()
    mean = probs.mean(0)
    balance = (mean * (mean.clamp_min(1e-8) / prior.clamp_min(1e-8)).log()).sum()
    return entropy, balance


class Trainer(TargetTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        labels = torch.as_tensor(self.train_dataset["labels"])
        self.source_prior = torch.bincount(labels, minlength=self.model.config.num_labels).float() / len(labels)

    def target_loss(self, model, outputs, target: dict):
        c = self.method_cfg.entmin
        entropy, balance = information_loss(model(**target).logits, self.source_prior.to(outputs.logits.device))
        weight = ramp(self.progress(), c.weight, c.gamma)
        self.record("target_entropy", entropy.detach())
        self.record("target_balance_kl", balance.detach())
        self.record("entmin_weight", weight)
        return weight * (entropy + c.diversity * balance)
