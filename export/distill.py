"""Knowledge distillation from a fine-tuned checkpoint: how pruned models recover and how students learn.

Loss = task_weight * task CE + (1 - task_weight) * T^2 * KL(student/T || teacher/T), T = 2 unless set (Hinton et
al. 2015), plus hidden_weight * the mean squared distance between each student layer's hidden states and those of
the teacher layer it came from, at real tokens (TinyBERT's intermediate-layer loss; pruning and layer selection keep
the hidden size), plus hard_weight * the cross-entropy against the teacher's argmax (0 unless set). With task_weight 0
no labels are read: a student can learn from unlabeled text alone. With word_dropout p, half of each step's texts
reach both models with each ordinary token hidden with probability p: new inputs near the real ones, labelled by
the teacher (TinyBERT's data augmentation, with word deletion in place of its masked-LM replacement).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer

from domainlift import training
from domainlift.config import JobConfig

TEMPERATURE = 2.0  # of the logit loss, unless the caller sets one (students: export.student_temperature)


class DistillTrainer(Trainer):
    def __init__(self, *args, teacher, kept_layers, task_weight=0.5, temperature=TEMPERATURE, hidden_weight=0.0,
                 hard_weight=0.0, word_dropout=0.0, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()  # where the Trainer put the student (a GPU if any)
        self.task_weight, self.temperature, self.hidden_weight = task_weight, temperature, hidden_weight
        self.hard_weight, self.word_dropout = hard_weight, word_dropout
        self.kept_layers = kept_layers  # student layer j mimics teacher layer kept_layers[j]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hidden = self.hidden_weight > 0
        labels = inputs.pop("labels", None)
        task_loss = self.task_weight > 0 and labels is not None
        if self.word_dropout > 0 and model.training:  # the same noisy text for both models, in half of the rows
            mask = inputs["attention_mask"]
            specials = self.processing_class.all_special_ids
            noisy = training.word_dropout(inputs["input_ids"], mask, self.word_dropout, specials)
            rows = torch.rand(len(mask), device=mask.device) < 0.5
            inputs["attention_mask"] = torch.where(rows[:, None], noisy, mask)
        out = model(**inputs, labels=labels if task_loss else None, output_hidden_states=hidden)
        with torch.no_grad():
            t_out = self.teacher(**inputs, output_hidden_states=hidden)
        s, t = out.logits / self.temperature, t_out.logits / self.temperature
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        if kl.dim() == 2:  # tokens: the labelled positions, or every real token of unlabeled text
            scored = labels != -100 if labels is not None else inputs["attention_mask"].bool()
        else:
            scored = torch.ones_like(kl, dtype=torch.bool)
        weight = self.task_weight if task_loss else 0.0
        loss = (1 - weight) * self.temperature**2 * kl[scored].mean()
        if self.hard_weight > 0:  # the teacher's answer as a label: a sharp target where its soft one is near 50/50
            hard = F.cross_entropy(out.logits.transpose(1, -1), t_out.logits.argmax(-1), reduction="none")
            loss = loss + self.hard_weight * hard[scored].mean()
        if task_loss:
            loss = loss + weight * out.loss
        if hidden:
            real = inputs["attention_mask"].bool()
            teacher_states = [t_out.hidden_states[i + 1] for i in self.kept_layers]
            mse = [F.mse_loss(hs[real], ht[real]) for hs, ht in zip(out.hidden_states[1:], teacher_states)]
            loss = loss + self.hidden_weight * torch.stack(mse).mean()
        return (loss, out) if return_outputs else loss


def distill(model, teacher, dataset, collator, tokenizer, out_dir: Path, cfg: JobConfig, *, epochs: float,
            learning_rate: float, kept_layers: list[int], hidden_weight: float, task_weight: float,
            temperature: float = TEMPERATURE, hard_weight: float = 0.0, word_dropout: float = 0.0):  # fmt: skip
    """Train `model` on `dataset` (the job's train: settings, no evaluation) to mimic `teacher`; return it."""
    args = training.training_args(cfg.train, out_dir, epochs=epochs, learning_rate=learning_rate, select=False)
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        teacher=teacher,
        kept_layers=kept_layers,
        hidden_weight=hidden_weight,
        task_weight=task_weight,
        temperature=temperature,
        hard_weight=hard_weight,
        word_dropout=word_dropout,
    )
    trainer.train()
    return trainer.model
