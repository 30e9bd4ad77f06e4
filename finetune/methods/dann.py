"""Domain-adversarial training (DANN, Ganin et al. 2016): a domain classifier on the [CLS] representation,
behind a gradient reversal layer, learns to tell source batches from unlabeled target batches while the encoder
learns to make them indistinguishable. Every weight of the encoder trains (full fine-tuning).

The domain classifier is attached to the model while training (so the Trainer optimises and checkpoints it) and
removed before the checkpoint is saved: the saved model is a plain task model.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import DataCollatorWithPadding

from finetune.methods.target import TargetTrainer


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -weight backward."""

    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def reversal_weight(progress: float, weight: float, gamma: float) -> float:
    """0 at the start, rising to `weight`: the domain signal is noise while the classifier is untrained."""
    return weight * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def prepare(model, cfg, task: str):
    c = cfg.method.dann
    hidden = model.config.hidden_size
    if c.hidden:
        model.domain_classifier = nn.Sequential(
            nn.Linear(hidden, c.hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(c.hidden, 1)
        )
    else:  # dropout-only: a linear discriminator cannot outrun the encoder and tear the features apart
        model.domain_classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, 1))
    return model


def finalize(model, out_dir: Path):
    del model.domain_classifier
    return model


def target_collator(tokenizer, cfg):
    return DataCollatorWithPadding(tokenizer)


class Trainer(TargetTrainer):
    output_hidden_states = True  # the source batch's [CLS] vectors

    def target_loss(self, model, outputs, target: dict):
        c = self.method_cfg.dann
        source_cls = outputs.hidden_states[-1][:, 0]
        target_cls = model.base_model(**target).last_hidden_state[:, 0]
        features = torch.cat([source_cls, target_cls])
        domain = torch.cat([torch.zeros(len(source_cls)), torch.ones(len(target_cls))]).to(features.device)
        weight = reversal_weight(self.progress(), c.weight, c.gamma)
        logits = model.domain_classifier(GradientReversal.apply(features, weight)).squeeze(-1)
        domain_loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), domain)
        self.record("domain_loss", domain_loss.detach())
        self.record("reversal_weight", weight)
        return domain_loss
