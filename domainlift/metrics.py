"""The metrics of both tasks, computed the same way in training (model selection, test) and in export verification.

text-classification: accuracy and macro-F1 (scikit-learn). token-classification: entity-level micro precision,
recall and F1 over word-level BIO tags (seqeval), plus a per-entity-type report.
"""

from __future__ import annotations

import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as sk_f1

from domainlift.tasks import IGNORE, MAIN_METRIC

# The Trainer keeps the best dev checkpoint by this key and stops early when it stops rising: the main
# metric, ties broken by the mean probability the model gives the right label. Without the tie-break an
# easy dev set that is already at 100% after epoch 1 keeps the barely trained epoch-1 model and stops.
SELECTION_METRIC = "selection"
TIE_BREAK = 1e-6  # below one example's worth of the main metric on dev sets up to 10^6 examples


def metrics_fn(task: str, labels: list[str]):
    """compute_metrics for the Trainer: (logits, label ids) -> dict of floats."""

    def classification(pred):
        logits, y = pred
        p = np.argmax(logits, axis=-1)
        return {"accuracy": float(accuracy_score(y, p)), "macro_f1": float(sk_f1(y, p, average="macro"))}

    def ner(pred):
        true, predicted = decode_tags(pred[0], pred[1], labels)
        return {
            "f1": float(f1_score(true, predicted)),
            "precision": float(precision_score(true, predicted)),
            "recall": float(recall_score(true, predicted)),
        }

    compute = classification if task == "text-classification" else ner

    def with_selection(pred):
        out = compute(pred)
        out[SELECTION_METRIC] = out[MAIN_METRIC[task]] + TIE_BREAK * true_label_probability(pred[0], pred[1])
        return out

    return with_selection


def true_label_probability(logits: np.ndarray, label_ids: np.ndarray) -> float:
    """Mean softmax probability of the gold label over the labelled positions (texts, or first sub-words)."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    y = label_ids.reshape(-1)
    keep = y != IGNORE
    logits, y = logits[keep], y[keep]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return float(probs[np.arange(len(y)), y].mean()) if len(y) else 0.0


def decode_tags(logits: np.ndarray, label_ids: np.ndarray, labels: list[str]):
    """Word-level tag sequences (gold, predicted) from sub-word logits, skipping ignored positions."""
    p = np.argmax(logits, axis=-1)
    true, pred = [], []
    for prow, yrow in zip(p, label_ids):
        keep = yrow != IGNORE
        true.append([labels[i] for i in yrow[keep]])
        pred.append([labels[i] for i in prow[keep]])
    return true, pred


def per_type_report(logits: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> dict:
    """seqeval's per-entity-type precision/recall/F1/support."""
    true, pred = decode_tags(logits, label_ids, labels)
    report = classification_report(true, pred, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}
