"""A distilled student: fewer layers, initialised from the teacher's, taught by the fine-tuned checkpoint.

Student layer j starts as teacher layer kept[j], the layers spread evenly with the last one always kept (6 -> 3
keeps 2, 4, 6 in 1-based counting; DistilBERT and TinyBERT pick the same way), so the student's last layer feeds
the classifier what it was trained on. It then learns to give the teacher's outputs (logits at T = 2, and each
layer's hidden states; export/distill.py) on text that needs no labels: the source training texts plus the
target domain's unlabeled text (data.unlabeled and the target's train part), less the texts held out to measure
agreement. Distilling on target text is itself adaptation: the student learns the teacher's view of the domain
it will serve (FastFormers, Kim & Awadalla 2020: distil, then prune, then int8).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from domainlift import tasks
from domainlift.config import JobConfig
from export import distill

log = logging.getLogger(__name__)


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers (0-based) a student of student_layers starts from: evenly spread, the last one kept."""
    return [round((j + 1) * teacher_layers / student_layers) - 1 for j in range(student_layers)]


def student_model(ckpt: Path, cfg: JobConfig, texts, tokenizer, out: Path, layers: int) -> Path:
    """A `layers`-layer student of the checkpoint distilled on the tokenized, unlabeled `texts`, saved as a plain
    Hugging Face model in `out`."""
    e, task = cfg.export, cfg.data.task
    teacher = tasks.model_class(task).from_pretrained(ckpt)
    kept = spread_layers(teacher.config.num_hidden_layers, layers)
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in kept)
    student.config.num_hidden_layers = layers
    before, after = (sum(p.numel() for p in m.parameters()) for m in (teacher, student))
    log.info("student-%d: teacher layers %s, %d -> %d parameters, distilling on %d texts for %g epochs",
             layers, [i + 1 for i in kept], before, after, len(texts), e.student_epochs)  # fmt: skip
    student = distill.distill(
        student, teacher, texts, tasks.collator(task, tokenizer), tokenizer, out.with_name(out.name + "-distill"),
        cfg, epochs=e.student_epochs, learning_rate=e.student_learning_rate or cfg.train.learning_rate,
        kept_layers=kept, hidden_weight=e.student_hidden_weight, task_weight=0.0, temperature=e.student_temperature,
        hard_weight=e.student_hard_weight, word_dropout=e.student_word_dropout,
    )  # fmt: skip
    student.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"teacher_layers_kept": kept, "parameters": [before, after], "distill_texts": len(texts)}
    (out / "student.json").write_text(json.dumps(info, indent=2))
    return out
