"""Sub-word label alignment and the metrics."""

import datasets
import numpy as np

from domainlift import metrics, tasks
from domainlift.config import default_model_path


def test_first_subword_carries_the_word_label():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    labels = ["O", "B-politician", "I-politician"]
    ds = datasets.Dataset.from_list(
        [{"tokens": ["Shinzō", "Abe", "resigned"], "tags": ["B-politician", "I-politician", "O"]}]
    )
    enc = tasks.tokenize(ds, tok, labels, 64, "token-classification", "t")[0]
    words = tok(["Shinzō", "Abe", "resigned"], is_split_into_words=True).word_ids()
    assert len(enc["labels"]) == len(enc["input_ids"]) == enc["length"]
    first = {}
    for pos, w in enumerate(words):
        if w is not None and w not in first:
            first[w] = pos
    assert [enc["labels"][first[w]] for w in range(3)] == [1, 2, 0]
    assert sum(label != tasks.IGNORE for label in enc["labels"]) == 3, "one labelled position per word"
    assert words.count(0) > 1, "the test needs a word split into several sub-words"


def test_truncation_is_warned(caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    ds = datasets.Dataset.from_list([{"text": "word " * 100, "label": "a"}, {"text": "short", "label": "b"}])
    enc = tasks.tokenize(ds, tok, ["a", "b"], 16, "text-classification", "train")
    assert max(enc["length"]) == 16
    assert "1 of 2 inputs are longer than model.max_length=16" in caplog.text


def test_ner_metrics_are_entity_level():
    labels = ["O", "B-per", "I-per"]
    gold = np.array([[-100, 1, 2, 0, -100]])
    logits = np.eye(3)[np.array([[0, 1, 0, 0, 0]])]  # predicts a 1-token span where gold has 2 tokens
    m = metrics.metrics_fn("token-classification", labels)((logits, gold))
    assert m["f1"] == 0.0, "a partial span is a miss at entity level"
    logits = np.eye(3)[np.array([[0, 1, 2, 0, 2]])]
    assert metrics.metrics_fn("token-classification", labels)((logits, gold))["f1"] == 1.0


def test_classification_metrics():
    m = metrics.metrics_fn("text-classification", ["a", "b"])((np.array([[1, 0], [0, 1], [0, 1]]), np.array([0, 1, 0])))
    assert m["accuracy"] == 2 / 3 and 0 < m["macro_f1"] < 1


def test_selection_breaks_accuracy_ties_by_confidence_in_the_right_label():
    # Both models are right on both texts; the later, surer one must win model selection (and keep early
    # stopping from ending a run whose dev accuracy saturated in epoch 1).
    y = np.array([0, 1])
    unsure = metrics.metrics_fn("text-classification", ["a", "b"])((np.array([[0.1, 0.0], [0.0, 0.1]]), y))
    sure = metrics.metrics_fn("text-classification", ["a", "b"])((np.array([[5.0, 0.0], [0.0, 5.0]]), y))
    assert unsure["accuracy"] == sure["accuracy"] == 1.0
    assert sure["selection"] > unsure["selection"]
    # ...but confidence never outweighs one more right answer.
    wrong_but_sure = metrics.metrics_fn("text-classification", ["a", "b"])((np.array([[9.0, 0.0], [9.0, 0.0]]), y))
    assert wrong_but_sure["selection"] < unsure["selection"]


def test_true_label_probability_skips_ignored_positions():
    logits = np.log(np.array([[[0.8, 0.2], [0.5, 0.5], [0.3, 0.7]]]))
    labels = np.array([[0, -100, 1]])
    assert abs(metrics.true_label_probability(logits, labels) - 0.75) < 1e-9
