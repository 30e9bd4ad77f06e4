"""Entity aggregation from sub-word BIO tags, and the serve: settings, without a model or a server."""

import numpy as np
import pytest

from domainlift.config import ConfigError, serve_config
from serve.predictor import aggregate_entities

LABELS = ["O", "B-location", "I-location", "B-person", "I-person"]


def probs_for(tags: list[str], p: float = 0.9) -> np.ndarray:
    out = np.full((len(tags), len(LABELS)), (1 - p) / (len(LABELS) - 1))
    for t, tag in enumerate(tags):
        out[t, LABELS.index(tag)] = p
    return out


def test_words_take_their_first_subword_tag_and_spans_cover_whole_words():
    text = "Angela Merkel visited Heidelberg today"
    # [CLS] angela mer ##kel visited heidel ##berg today [SEP]; the ##-pieces' own tags are ignored
    word_ids = [None, 0, 1, 1, 2, 3, 3, 4, None]
    offsets = [(0, 0), (0, 6), (7, 10), (10, 13), (14, 21), (22, 28), (28, 32), (33, 38), (0, 0)]
    tags = ["O", "B-person", "I-person", "O", "O", "B-location", "O", "O", "O"]
    entities = aggregate_entities(text, word_ids, offsets, probs_for(tags), LABELS)
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("person", "Angela Merkel", 0, 13),
        ("location", "Heidelberg", 22, 32),
    ]
    assert all(abs(e["score"] - 0.9) < 1e-6 for e in entities)


def test_i_without_b_starts_an_entity_and_a_type_change_splits_it():
    text = "a b c d"
    word_ids = [None, 0, 1, 2, 3, None]
    offsets = [(0, 0), (0, 1), (2, 3), (4, 5), (6, 7), (0, 0)]
    tags = ["O", "I-location", "I-location", "I-person", "B-person", "O"]
    entities = aggregate_entities(text, word_ids, offsets, probs_for(tags), LABELS)
    assert [(e["type"], e["text"]) for e in entities] == [("location", "a b"), ("person", "c"), ("person", "d")]


def test_no_entities_when_every_word_is_outside():
    tags = ["O", "O", "O"]
    assert aggregate_entities("hi", [None, 0, None], [(0, 0), (0, 2), (0, 0)], probs_for(tags), LABELS) == []


def test_serve_settings_are_validated_like_the_yaml():
    assert serve_config({"max_texts": 8, "long_text": "truncate"}).max_texts == 8
    with pytest.raises(ConfigError, match="Did you mean serve.max_texts"):
        serve_config({"max_text": 8})
    with pytest.raises(ConfigError, match="choose one of reject, truncate"):
        serve_config({"long_text": "cut"})
    with pytest.raises(ConfigError, match="serve.micro_batch_size is 0"):
        serve_config({"micro_batch_size": 0})
