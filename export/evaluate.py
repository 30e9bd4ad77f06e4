"""Verify a variant against its checkpoint on the same inputs: metric, ratio, agreement, max |Δlogit|, latency."""

from __future__ import annotations

import statistics
import time

import numpy as np

from finetune import tasks

EVAL_BATCH = 32


def batches(enc, tokenizer, size: int = EVAL_BATCH) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches padded to their own longest input: (original indices, numpy batch)."""
    order = np.argsort(enc["length"], kind="stable")
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in enc.column_names]
    out = []
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        rows = enc.select(idx.tolist())
        padded = tokenizer.pad({c: rows[c] for c in cols}, return_tensors="np")
        if "token_type_ids" not in padded:
            padded["token_type_ids"] = np.zeros_like(padded["input_ids"])
        out.append((idx, dict(padded)))
    return out


def predict(runner, enc, tokenizer) -> np.ndarray:
    """Logits for every example in the original order; token logits are padded to the longest input."""
    parts = [(idx, runner(b)) for idx, b in batches(enc, tokenizer)]
    if parts[0][1].ndim == 2:
        out = np.zeros((len(enc), parts[0][1].shape[-1]), dtype=np.float32)
        for idx, logits in parts:
            out[idx] = logits
        return out
    width = max(enc["length"])
    out = np.zeros((len(enc), width, parts[0][1].shape[-1]), dtype=np.float32)
    for idx, logits in parts:
        out[idx, : logits.shape[1]] = logits
    return out


def label_matrix(enc) -> np.ndarray:
    """Gold label ids: [n] for classification, [n, max_len] padded with IGNORE for NER."""
    labels = enc["labels"]
    if not isinstance(labels[0], list):
        return np.asarray(labels)
    width = max(enc["length"])
    out = np.full((len(labels), width), tasks.IGNORE)
    for i, row in enumerate(labels):
        out[i, : len(row)] = row
    return out


def compare(task: str, labels: list[str], logits: np.ndarray, ref_logits: np.ndarray, gold: np.ndarray) -> dict:
    metrics = tasks.metrics_fn(task, labels)((logits, gold))
    mask = gold != tasks.IGNORE  # NER: only positions that carry a word's label
    pred, ref = logits.argmax(-1), ref_logits.argmax(-1)
    return {
        **metrics,
        "agreement": float((pred == ref)[mask].mean()),
        "max_abs_dlogit": float(np.abs(logits - ref_logits)[mask].max()),
    }


def latency_ms(runner, enc, tokenizer, n: int, warmup: int = 5) -> dict:
    """Batch 1, natural length (no padding): the first n test inputs, one at a time."""
    singles = [b for _, b in batches(enc.select(range(min(n, len(enc)))), tokenizer, size=1)]
    for b in singles[:warmup]:
        runner(b)
    times = []
    for b in singles:
        t0 = time.perf_counter()
        runner(b)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": statistics.median(times), "mean": statistics.fmean(times), "total": sum(times), "n": len(times)}
