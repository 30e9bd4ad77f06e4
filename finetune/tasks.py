"""What differs between the two tasks: model class, tokenisation/label alignment, collator, metrics.

text-classification: one label per text; accuracy and macro-F1.
token-classification: BIO tag per word; the first sub-word of each word carries the word's tag and the
other sub-words are ignored (-100), so metrics are computed per word, entity-level with seqeval.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as sk_f1
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
)

log = logging.getLogger(__name__)
IGNORE = -100  # label id the loss and the metrics skip

MAIN_METRIC = {"text-classification": "accuracy", "token-classification": "f1"}
# The Trainer keeps the best dev checkpoint by this key and stops early when it stops rising: the main
# metric, ties broken by the mean probability the model gives the right label. Without the tie-break an
# easy dev set that is already at 100% after epoch 1 keeps the barely trained epoch-1 model and stops.
SELECTION_METRIC = "selection"
TIE_BREAK = 1e-6  # below one example's worth of the main metric on dev sets up to 10^6 examples


def model_class(task: str):
    return AutoModelForSequenceClassification if task == "text-classification" else AutoModelForTokenClassification


def collator(task: str, tokenizer):
    # Pads each batch to its own longest sequence (never to max_length).
    if task == "text-classification":
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)


def tokenize(
    ds: datasets.Dataset, tokenizer, labels: list[str], max_length: int, task: str, name: str
) -> datasets.Dataset:
    """input_ids, attention_mask, labels and length (for length grouping); warns how many were truncated."""
    label2id = {lab: i for i, lab in enumerate(labels)}
    has_labels = "label" in ds.column_names or "tags" in ds.column_names

    if task == "text-classification":

        def encode(batch):
            full = tokenizer(batch["text"], truncation=False, verbose=False)["input_ids"]
            enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
            enc["length"] = [len(x) for x in enc["input_ids"]]
            enc["truncated"] = [len(x) > max_length for x in full]
            if has_labels:
                enc["labels"] = [label2id[lab] for lab in batch["label"]]
            return enc
    else:

        def encode(batch):
            full = tokenizer(batch["tokens"], is_split_into_words=True, truncation=False, verbose=False)["input_ids"]
            enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            enc["length"] = [len(x) for x in enc["input_ids"]]
            enc["truncated"] = [len(x) > max_length for x in full]
            if has_labels:
                enc["labels"] = [_align(enc.word_ids(i), tags, label2id) for i, tags in enumerate(batch["tags"])]
            return enc

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {name}")
    n_trunc = sum(out["truncated"])
    if n_trunc:
        log.warning(
            "%s: %d of %d inputs are longer than model.max_length=%d tokens and were truncated "
            "(raise model.max_length to keep them whole)",
            name,
            n_trunc,
            len(out),
            max_length,
        )
    return out.remove_columns("truncated")


def _align(word_ids: list, tags: list[str], label2id: dict) -> list[int]:
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == prev else label2id[tags[w]])
        prev = w
    return out


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
