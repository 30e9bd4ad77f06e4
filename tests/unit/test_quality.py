"""The gate's arithmetic: the paired-bootstrap interval of the ratio, agreement, and why a variant fails."""

import numpy as np
from seqeval.metrics import f1_score

from domainlift import quality
from domainlift.metrics import decode_tags

LABELS = ["O", "B-LOC", "I-LOC", "B-PER"]


def _onehot(ids, n):
    return np.eye(n, dtype=np.float32)[np.asarray(ids)] * 5


def test_the_ratio_interval_is_a_point_for_a_copy_and_widens_with_disagreement():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    ref_pred = np.where(rng.random(400) < 0.9, gold, 1 - gold)  # 90% right
    ref = _onehot(ref_pred, 2)
    assert quality.ratio_interval("text-classification", ["n", "p"], ref, ref, gold) == (1.0, 1.0)
    flipped = ref_pred.copy()
    flipped[:20] = 1 - flipped[:20]  # 20 answers changed: right ones become wrong and the other way round
    lo, hi = quality.ratio_interval("text-classification", ["n", "p"], _onehot(flipped, 2), ref, gold)
    ratio = (flipped == gold).mean() / (ref_pred == gold).mean()
    assert lo < ratio < hi and lo < 1 and hi - lo < 0.08


def test_entity_counts_sum_to_seqevals_micro_f1():
    gold = np.array([[0, 1, 2, 0, 3], [1, 0, 0, 3, -100], [0, 0, 0, 0, 0]])
    pred = _onehot([[0, 1, 2, 0, 0], [1, 0, 0, 3, 0], [0, 3, 0, 0, 0]], 4)
    counts = quality.example_counts("token-classification", LABELS, pred, gold)
    tp, fp, fn = counts.sum(0)
    true, predicted = decode_tags(pred, gold, LABELS)
    assert np.isclose(2 * tp / (2 * tp + fp + fn), f1_score(true, predicted))


def test_agreement_counts_real_tokens_only():
    a = _onehot([[0, 1, 1, 1], [1, 1, 0, 0]], 2)
    b = _onehot([[0, 1, 0, 0], [1, 1, 1, 1]], 2)
    assert quality.agreement(a, b, [2, 2]) == 1.0  # the differences are all past each text's end
    assert quality.agreement(a[:, 0], b[:, 0], [1, 1]) == 1.0
    assert quality.agreement(a, b, [4, 4]) == 0.5


def test_the_gate_names_each_failing_check_and_its_setting():
    good = {"ratio": 1.0, "unlabeled_agreement": 0.99, "unlabeled_texts": 1000}
    assert quality.gate_problems(good, 0.99, 0.97) == []
    low = quality.gate_problems({**good, "ratio": 0.95, "unlabeled_agreement": 0.9}, 0.99, 0.97)
    assert "below export.min_accuracy_ratio=0.99" in low[0] and "export.min_agreement=0.97" in low[1]
    assert "0.9000 of 1000 held-out target texts" in low[1]
    assert quality.gate_problems({**good, "unlabeled_agreement": 0.5}, 0.99, 0.0) == [], "0 turns the check off"
    assert quality.gate_problems({"ratio": 1.0}, 0.99, 0.97) == [], "no held-out text: nothing to measure"
