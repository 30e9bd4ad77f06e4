"""Drift: how far live traffic has moved from the target domain a model was exported for.

A profile is four histograms over fixed bins, of texts as the model saw them:

    confidence   the top-class probability (per text; for NER the mean over its words), 10 bins over [0, 1]
    length       tokens after truncation, bins up to 8, 16, 32, 64, 128, 256, 512 and more
    label        the predicted labels (NER: the predicted tags of words)
    vocabulary   the reference texts' 200 commonest word pieces, one bin each, and one bin for every other

Export saves the reference profile of each variant (`drift_profile.json`), computed on the target domain's
unlabeled text; the service keeps the same histograms over a rolling window of its latest texts.

The statistic is the population stability index of each part, PSI = sum over bins of (live - ref) * ln(live / ref)
on bin shares (an empty bin counts as a share of 1e-4), and the drift score is the largest part. Why PSI: it is
one number per part that works the same for a categorical part (labels) and a binned one (confidence, length,
vocabulary), it needs only counts (the service updates it per request in microseconds), and its scale has
conventional readings in production monitoring: under 0.1 stable, 0.1-0.25 moving, over 0.25 a real shift.
DRIFT_THRESHOLD is that 0.25; docs/monitoring.md shows the score on in-domain and shifted traffic. On traffic that
did not move, PSI over n texts is still about (bins - 1) / n by chance alone (0.18 for the 10 confidence bins at
n = 50), so a window reports nothing until it holds MIN_TEXTS texts (0.045 there).
"""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

PROFILE_FILE = "drift_profile.json"
DRIFT_THRESHOLD = 0.25
PARTS = ("confidence", "length", "label", "vocabulary")
CONFIDENCE_EDGES = [i / 10 for i in range(1, 10)]  # 10 bins over [0, 1]
LENGTH_EDGES = [8, 16, 32, 64, 128, 256, 512]
VOCABULARY_SIZE = 200
FLOOR = 1e-4
MIN_TEXTS = 200


def features(logits: np.ndarray, token_ids: list[int], label_names: list[str], special_ids: set[int]) -> dict:
    """What one served text contributes, from the model's logits for it ([labels], or [tokens, labels] for NER,
    aligned with token_ids): its top-class probability (NER: the mean over its word pieces), its length, its
    predicted label(s) (NER: the tags of its word pieces), and its word pieces; special tokens are left out."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    pieces = [t for t in token_ids if t not in special_ids]
    if probs.ndim == 1:
        confidence, labels = float(probs.max()), [label_names[int(probs.argmax())]]
    else:
        real = [j for j, t in enumerate(token_ids[: len(probs)]) if t not in special_ids] or [0]
        confidence = float(probs[real].max(-1).mean())
        labels = [label_names[int(k)] for k in probs[real].argmax(-1)]
    return {"confidence": confidence, "length": len(token_ids), "labels": labels, "pieces": pieces}


def reference(items: list[dict], label_names: list[str]) -> dict:
    """The reference profile of a list of features(): the bins and each part's shares."""
    pieces = Counter(p for it in items for p in it["pieces"])
    vocabulary = [p for p, _ in pieces.most_common(VOCABULARY_SIZE)]
    profile = {"texts": len(items), "labels": list(label_names), "vocabulary": vocabulary}
    counts = histograms(items, profile)
    profile["shares"] = {part: _shares(c).tolist() for part, c in counts.items()}
    return profile


def histograms(items, profile: dict) -> dict[str, np.ndarray]:
    """Counts per bin of each part, for the features of `items`, on the bins of `profile`."""
    counts = _empty(profile)
    bins = _Bins(profile)
    for it in items:
        bins.count(counts, it, 1)
    return counts


def _empty(profile: dict) -> dict[str, np.ndarray]:
    return {
        "confidence": np.zeros(len(CONFIDENCE_EDGES) + 1),
        "length": np.zeros(len(LENGTH_EDGES) + 1),
        "label": np.zeros(len(profile["labels"])),
        "vocabulary": np.zeros(len(profile["vocabulary"]) + 1),
    }


class _Bins:
    def __init__(self, profile: dict):
        self.pieces = {p: i for i, p in enumerate(profile["vocabulary"])}
        self.labels = {lab: i for i, lab in enumerate(profile["labels"])}

    def count(self, counts: dict, item: dict, sign: int) -> None:
        counts["confidence"][np.searchsorted(CONFIDENCE_EDGES, item["confidence"], side="right")] += sign
        counts["length"][np.searchsorted(LENGTH_EDGES, item["length"], side="left")] += sign
        for lab in item["labels"]:
            if lab in self.labels:
                counts["label"][self.labels[lab]] += sign
        other = len(self.pieces)
        for p in item["pieces"]:
            counts["vocabulary"][self.pieces.get(p, other)] += sign


def psi(live: np.ndarray, ref: np.ndarray) -> float:
    p, q = np.maximum(_shares(live), FLOOR), np.maximum(np.asarray(ref, dtype=float), FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return counts / total if total else counts


class Window:
    """The latest `size` texts and each part's PSI against a reference profile; counts are kept up to date as texts
    come and go, so a score costs a few hundred operations, not a pass over the window."""

    def __init__(self, profile: dict, size: int):
        self.profile, self.size = profile, size
        self.items: deque[dict] = deque()
        self.counts = _empty(profile)
        self._bins = _Bins(profile)
        self._lock = threading.Lock()  # requests of one worker may be answered from several threads

    def add(self, items: list[dict]) -> None:
        with self._lock:
            for it in items:
                if len(self.items) == self.size:
                    self._bins.count(self.counts, self.items.popleft(), -1)
                self.items.append(it)
                self._bins.count(self.counts, it, 1)

    def scores(self) -> dict[str, float]:
        """PSI per part and `score`, the largest; empty until the window holds MIN_TEXTS texts (or is full)."""
        with self._lock:
            if len(self.items) < min(MIN_TEXTS, self.size):
                return {}
            parts = {part: psi(self.counts[part], self.profile["shares"][part]) for part in PARTS}
        return {**parts, "score": max(parts.values())}
