"""Self-training (method.name <method>+self-train): a teacher labels the target domain's unlabeled text, and a fresh
student learns from the labelled source data plus the teacher's most confident predictions on the target.

Pseudo-labels come only from `Splits.unlabeled` (texts without labels: the target's train part, whose labels are
never read, and data.unlabeled), never from a labelled target row. Per class, they are class-balanced to the
source's label shares, so a teacher that leans to one class on the new domain does not hand that lean on.

The student is plain full fine-tuning from the same starting weights as the teacher (after DAPT, with
dapt+self-train), with soft targets: each text's loss is the cross-entropy against its target distribution (the
teacher's probabilities for a pseudo-labelled text, one-hot for a labelled one), weighted by method.self_train.weight
for pseudo-labelled texts; with method.self_train.noise, training hides a random share of each input's tokens
from the student (a noisy student). Evaluation and model selection are the plain task loss and metrics on the
source dev set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import Trainer as HFTrainer

from domainlift import tasks
from domainlift.config import SelfTrainConfig
from domainlift.training import word_dropout

log = logging.getLogger(__name__)
SOFT, WEIGHT = "soft", "weight"  # the extra training columns: target distribution, loss weight


def prepare(model, cfg, task: str):
    return model


def finalize(model, out_dir: Path):
    return model


class Trainer(HFTrainer):
    """The task loss against soft targets where a batch carries them (training); the plain loss otherwise."""

    def __init__(self, *args, method_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.noise = method_cfg.self_train.noise

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, SOFT, WEIGHT]  # keep them in the batches

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        soft, weight = inputs.pop(SOFT, None), inputs.pop(WEIGHT, None)
        if soft is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.noise:
            inputs["attention_mask"] = word_dropout(inputs["input_ids"], inputs["attention_mask"], self.noise,
                                                    self.processing_class.all_special_ids)  # fmt: skip
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        per_text = -(soft * outputs.logits.float().log_softmax(-1)).sum(-1)
        loss = (per_text * weight).sum() / weight.sum()
        return (loss, outputs) if return_outputs else loss


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """The model's logits for every text, in order (length-sorted batches padded to their own longest text)."""
    model.eval()
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(model.device)
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def select(logits: np.ndarray, source_share: np.ndarray, c: SelfTrainConfig) -> np.ndarray:
    """Indices of the pseudo-labelled texts: per predicted class, the most confident of the texts predicted as it,
    none below the threshold, at most top_fraction * n * (the class's share of the source labels) (balance: source)
    or top_fraction of the texts predicted as it (balance: predicted)."""
    probs = _softmax(logits)
    pred, conf = probs.argmax(-1), probs.max(-1)
    chosen = []
    for k, share in enumerate(source_share):
        mine = np.where((pred == k) & (conf >= c.threshold))[0]
        predicted = int((pred == k).sum())
        limit = int(c.top_fraction * (len(logits) * share if c.balance == "source" else predicted))
        chosen.append(mine[np.argsort(-conf[mine], kind="stable")][:limit])
    return np.sort(np.concatenate(chosen))


def pseudo_labelled(logits: np.ndarray, texts: list[str], labels: list[str], source_labels: list[str], c) -> tuple:
    """The pseudo-labelled rows (text, label = the teacher's argmax, soft target, weight) and what was chosen."""
    share = np.array([source_labels.count(lab) for lab in labels], dtype=np.float64)
    share /= share.sum()
    idx = select(logits, share, c)
    if c.labels == "soft":
        targets = _softmax(logits[idx] / c.temperature)
    else:
        targets = np.eye(len(labels), dtype=np.float32)[logits[idx].argmax(-1)]
    pred = logits[idx].argmax(-1)
    rows = {
        "text": [texts[i] for i in idx],
        "label": [labels[k] for k in pred],
        SOFT: targets.astype(np.float32).tolist(),
        WEIGHT: [float(c.weight)] * len(idx),
    }
    counts = {lab: int((pred == k).sum()) for k, lab in enumerate(labels)}
    predicted = {lab: int((logits.argmax(-1) == k).sum()) for k, lab in enumerate(labels)}
    log.info("self-train: %d of %d unlabeled texts pseudo-labelled %s (the teacher predicted %s)", len(idx),
             len(texts), counts, predicted)  # fmt: skip
    return datasets.Dataset.from_dict(rows), {"pseudo_labelled": len(idx), "per_class": counts, "predicted": predicted}


def with_targets(encoded: datasets.Dataset, num_labels: int) -> datasets.Dataset:
    """Labelled rows as soft-target rows: one-hot targets, weight 1."""
    eye = np.eye(num_labels, dtype=np.float32)
    return encoded.map(lambda r: {SOFT: eye[r["labels"]].tolist(), WEIGHT: 1.0}, desc="labelled targets")


def student_data(encoded_train, pseudo: datasets.Dataset, tokenizer, labels: list[str], max_length: int):
    """The labelled source rows and the pseudo-labelled target rows, tokenized, with their targets and weights."""
    enc = tasks.tokenize(pseudo, tokenizer, labels, max_length, "text-classification", "pseudo-labelled")
    enc = enc.add_column(SOFT, pseudo[SOFT]).add_column(WEIGHT, pseudo[WEIGHT])
    source = with_targets(encoded_train, len(labels))
    return datasets.concatenate_datasets([source, enc.cast(source.features)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)
