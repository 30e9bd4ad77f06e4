"""Verify a variant against its checkpoint on the same inputs (metric, ratio, agreement, max |Δlogit|), and time it."""

from __future__ import annotations

import statistics
import time

import numpy as np

from domainlift import drift, metrics
from domainlift.runtime import pad_batch
from domainlift.tasks import IGNORE, MODEL_INPUTS

EVAL_BATCH = 32


def batches(enc, tokenizer, size: int = EVAL_BATCH) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches padded to their own longest input: (original indices, numpy batch)."""
    order = np.argsort(enc["length"], kind="stable")
    cols = [c for c in MODEL_INPUTS if c in enc.column_names]
    out = []
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        rows = enc.select(idx.tolist())
        out.append(
            (
                idx,
                pad_batch(
                    [dict(zip(cols, values)) for values in zip(*(rows[c] for c in cols))], tokenizer.pad_token_id
                ),
            )
        )
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
    out = np.full((len(labels), width), IGNORE)
    for i, row in enumerate(labels):
        out[i, : len(row)] = row
    return out


def compare(task: str, labels: list[str], logits: np.ndarray, ref_logits: np.ndarray, gold: np.ndarray) -> dict:
    scores = metrics.metrics_fn(task, labels)((logits, gold))
    mask = gold != IGNORE  # NER: only positions that carry a word's label
    pred, ref = logits.argmax(-1), ref_logits.argmax(-1)
    return {
        **scores,
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


def time_interleaved(load_runner, dirs: dict, enc, tokenizer, n: int, rounds: int) -> dict[str, list[dict]]:
    """Batch-1 latency of every model in `dirs` ({name: directory}), measured `rounds` times with the order rotated
    each round: a machine whose speed drifts (shared cores, other load) then slows every model alike instead of
    whichever happened to run at the time. Returns each model's measurements, one per round."""
    names = list(dirs)
    per_round: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_round[name].append(latency_ms(load_runner(dirs[name]), enc, tokenizer, n))
    return per_round


def speedups(runs: list[dict], ref_runs: list[dict]) -> dict:
    """A model's latency (median over rounds) and its speedup over the reference: the median of the per-round
    ratios (each round times both), with their range, the spread a reader should allow for when ranking."""
    p50 = [ref["p50"] / mine["p50"] for mine, ref in zip(runs, ref_runs)]
    total = [ref["total"] / mine["total"] for mine, ref in zip(runs, ref_runs)]
    return {
        "latency_p50_ms": statistics.median(m["p50"] for m in runs),
        "latency_mean_ms": statistics.median(m["mean"] for m in runs),
        "speedup_p50": statistics.median(p50),
        "speedup_p50_range": [min(p50), max(p50)],
        "speedup_total": statistics.median(total),
        "speedup_total_range": [min(total), max(total)],
    }


def drift_profile(runner, enc, tokenizer, labels: list[str]) -> dict:
    """The variant's reference profile (domainlift/drift.py) on tokenized target-domain texts."""
    logits = predict(runner, enc, tokenizer)
    special = set(tokenizer.all_special_ids)
    items = [
        drift.features(logits[i][: len(ids)] if logits.ndim == 3 else logits[i], ids, labels, special)
        for i, ids in enumerate(enc["input_ids"])
    ]
    return drift.reference(items, labels)
