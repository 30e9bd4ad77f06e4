"""How a variant is judged against its checkpoint: the gate, and how far its test-set ratio can be trusted.

The gate (export and serve apply the same one): the variant's test metric is at least export.min_accuracy_ratio of
the checkpoint's, and it gives the checkpoint's prediction on at least export.min_agreement of the held-out target
texts. The ratio comes from a test set of a few hundred examples, where two or three flipped reviews decide; its
95% interval comes from a paired bootstrap (the same resampled examples scored for both models). Agreement needs
no labels, so it is measured on a thousand or more target texts.
"""

from __future__ import annotations

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from domainlift.metrics import decode_tags

BOOTSTRAP_SAMPLES = 1000


def example_counts(task: str, labels: list[str], logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per example, the counts the main metric sums: [correct] (accuracy) or [tp, fp, fn] entities (micro F1,
    seqeval's default entity matching)."""
    if task == "text-classification":
        return (logits.argmax(-1) == gold).astype(np.float64)[:, None]
    true, pred = decode_tags(logits, gold, labels)
    rows = []
    for t, p in zip(true, pred):
        t, p = set(get_entities(t)), set(get_entities(p))
        rows.append((len(t & p), len(p - t), len(t - p)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _score(sums: np.ndarray, n: int) -> np.ndarray:
    if sums.shape[-1] == 1:
        return sums[..., 0] / n
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)


def ratio_interval(task, labels, logits, ref_logits, gold, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0):
    """95% paired-bootstrap interval of (variant metric / checkpoint metric) over the test examples."""
    mine, ref = example_counts(task, labels, logits, gold), example_counts(task, labels, ref_logits, gold)
    n = len(mine)
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    a, b = _score(mine[idx].sum(1), n), _score(ref[idx].sum(1), n)
    ratios = np.divide(a, b, out=np.zeros_like(a), where=b > 0)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def agreement(logits: np.ndarray, ref_logits: np.ndarray, lengths: list[int]) -> float:
    """The share of predictions that match: texts, or the real tokens of each text (token classification)."""
    same = logits.argmax(-1) == ref_logits.argmax(-1)
    if same.ndim == 1:
        return float(same.mean())
    return float(np.concatenate([row[:n] for row, n in zip(same, lengths)]).mean())


def gate_problems(quality: dict, min_ratio: float, min_agreement: float) -> list[str]:
    """Why a variant with this measured quality fails the gate (empty: it passes)."""
    problems = []
    ratio = quality.get("ratio") or 0.0
    if ratio < min_ratio:
        problems.append(f"its metric is {ratio:.4f} of the checkpoint's, below export.min_accuracy_ratio={min_ratio}")
    agreed = quality.get("unlabeled_agreement")
    if min_agreement > 0 and agreed is not None and agreed < min_agreement:
        problems.append(
            f"it agrees with the checkpoint on {agreed:.4f} of {quality.get('unlabeled_texts')} held-out target "
            f"texts, below export.min_agreement={min_agreement}"
        )
    return problems
