"""Adversarial training on the embeddings (FGM, Miyato et al. 2017): after each backward pass, the word
embedding matrix is pushed `epsilon` along its normalised gradient, the same batch is trained on again (its
gradients add up), and the embeddings are put back before the optimiser step. Every weight trains."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer as HFTrainer

from finetune.methods.target import unwrap


def prepare(model, cfg, task: str):
    return model


def finalize(model, out_dir: Path):
    return model


class Trainer(HFTrainer):
    def __init__(self, *args, method_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon = method_cfg.fgm.epsilon

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        embeddings = unwrap(model).get_input_embeddings().weight
        grad = embeddings.grad
        if grad is None:
            return loss
        norm = torch.linalg.vector_norm(grad)
        if not torch.isfinite(norm) or norm == 0:
            return loss
        backup = embeddings.data.clone()  # restored exactly (adding and subtracting delta is not exact)
        embeddings.data.add_(self.epsilon * grad / norm)
        super().training_step(model, inputs, num_items_in_batch)  # adds the adversarial gradients
        embeddings.data.copy_(backup)
        return loss
