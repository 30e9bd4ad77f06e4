"""Readers and the domain protocol on the real datasets, and every bad input a user can bring."""

import json
import logging
from collections import Counter

import pytest
from conftest import BOOKS, CROSSNER, KITCHEN

from domainlift.config import DataConfig, DomainConfig
from domainlift.data import build_splits, load_domain, read_conll, read_labelled
from domainlift.errors import DataError


def test_amazon_protocol_same_domain(caplog):
    with caplog.at_level(logging.WARNING):
        s = build_splits(DataConfig(source=KITCHEN, target=KITCHEN))
    # kitchen.jsonl holds 22 reviews twice: copies of test reviews leave train/dev/unlabeled, with a warning.
    assert len(s.test) == 400 and 1390 <= len(s.train) <= 1400 and 195 <= len(s.dev) <= 200
    assert 1590 <= len(s.unlabeled) <= 1600
    assert "also occur in the test set" in caplog.text
    assert Counter(s.test["label"]) == {"positive": 200, "negative": 200}  # stratified
    test_texts = set(s.test["text"])
    assert not test_texts & set(s.train["text"]) and not test_texts & set(s.dev["text"])
    assert not test_texts & set(s.unlabeled["text"]), "test reviews must never reach training in any form"
    assert s.labels == ["negative", "positive"]
    assert "label" not in s.unlabeled.column_names


def test_amazon_protocol_cross_domain_keeps_the_same_target_test_set():
    cross = build_splits(DataConfig(source=BOOKS, target=KITCHEN))
    same = build_splits(DataConfig(source=KITCHEN, target=KITCHEN))
    assert (len(cross.train), len(cross.dev), len(cross.test)) == (1600, 400, 400)
    assert cross.test["text"] == same.test["text"], "a domain's test set must not depend on the source"
    assert not set(cross.unlabeled["text"]) & set(cross.test["text"])


def test_splits_are_deterministic():
    a = build_splits(DataConfig(source=KITCHEN, target=KITCHEN))
    b = build_splits(DataConfig(source=KITCHEN, target=KITCHEN))
    assert a.train["text"] == b.train["text"] and a.dev["text"] == b.dev["text"]
    c = build_splits(DataConfig(source=KITCHEN, target=KITCHEN, seed=7))
    assert c.test["text"] != a.test["text"]


def test_crossner_directory_domain():
    cfg = DataConfig(task="token-classification", source=str(CROSSNER / "politics"), target=str(CROSSNER / "politics"))
    s = build_splits(cfg)
    assert len(s.test) == 651 and 195 <= len(s.train) <= 200 and 530 <= len(s.dev) <= 541
    assert s.labels[0] == "O" and "B-politician" in s.labels and "I-politician" in s.labels
    assert len(s.labels) == 19


def test_csv_with_configured_fields(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("review,stars\n" + "".join(f"text number {i},{i % 3}\n" for i in range(30)))
    ds = read_labelled(p, DataConfig(text_field="review", label_field="stars"))
    assert ds.column_names == ["text", "label"] and ds[1] == {"text": "text number 1", "label": "1"}


def test_missing_column_names_the_key(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"body": "x", "label": "a"}) + "\n")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, label\); set data.text_field"):
        read_labelled(p, DataConfig())


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl does not exist; check data.source"):
        read_labelled(tmp_path / "nope.jsonl", DataConfig())


def test_bad_jsonl_line_is_numbered(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_labelled(p, DataConfig())


def test_empty_texts_are_dropped_with_a_count(tmp_path, caplog):
    p = tmp_path / "d.jsonl"
    rows = [
        {"text": "good", "label": "p"},
        {"text": "   ", "label": "n"},
        {"text": "", "label": "n"},
        {"text": "bad", "label": "n"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        ds = read_labelled(p, DataConfig())
    assert ds["text"] == ["good", "bad"]
    assert "dropped 2 of 4 rows" in caplog.text


def test_label_unseen_in_training(tmp_path):
    src, tgt = tmp_path / "src.jsonl", tmp_path / "tgt.jsonl"
    src.write_text("".join(json.dumps({"text": f"s{i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(40)))
    tgt.write_text("".join(json.dumps({"text": f"t{i}", "label": "neutral"}) + "\n" for i in range(40)))
    with pytest.raises(DataError, match=r"test set has labels never seen in training: neutral"):
        build_splits(DataConfig(source=str(src), target=str(tgt), test_size=10))


def test_malformed_conll_line_number(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("EU\tB-org\nrejects\tO\n\nGerman B-misc extra\n")
    with pytest.raises(DataError, match=r"train.txt:4: malformed CoNLL line"):
        read_conll(p)
    p.write_text("EU\tB-org\nrejects\tX-bad\n")
    with pytest.raises(DataError, match=r"train.txt:2: malformed"):
        read_conll(p)


def test_conll_reader(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text("-DOCSTART-\tO\n\nEU\tB-org\nrejects\tO\n\nPeter\tB-per\nBlackburn\tI-per\n")
    ds = read_conll(p)
    assert ds["tokens"] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert ds["tags"] == [["B-org", "O"], ["B-per", "I-per"]]


def test_directory_domain_needs_train_and_test(tmp_path):
    (tmp_path / "train.txt").write_text("a\tO\n")
    with pytest.raises(DataError, match="has no test"):
        load_domain(str(tmp_path), DataConfig(task="token-classification"))


def _write_csv_target(path, n=120):
    """A user's own target file: kitchen reviews as `reviews,labels` with 0/1 labels."""
    import csv

    rows = [json.loads(line) for line in open(KITCHEN)][:n]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reviews", "labels"])
        for r in rows:
            w.writerow([r["text"], 1 if r["label"] == "positive" else 0])


def test_a_target_file_with_its_own_columns_and_labels(tmp_path):
    """Train on the kitchen JSONL, deploy on your own CSV (`reviews,labels` with 0/1): the target says so."""
    target = tmp_path / "mine.csv"
    _write_csv_target(target)
    with pytest.raises(DataError, match=r"mine.csv has no column 'text' \(columns: reviews, labels\).*text_field"):
        build_splits(DataConfig(source=BOOKS, target=str(target), test_size=40))
    mapping = {"path": str(target), "text_field": "reviews", "label_field": "labels"}
    with pytest.raises(DataError, match=r"labels never seen in training: 0, 1.*label_map"):
        build_splits(DataConfig(source=BOOKS, target=DomainConfig(**mapping), test_size=40))
    mapped = DomainConfig(**mapping, label_map={0: "negative", 1: "positive"})
    s = build_splits(DataConfig(source=BOOKS, target=mapped, test_size=40))
    assert len(s.test) == 40 and set(s.test["label"]) == {"negative", "positive"}
    assert len(s.train) == 2000 - 40 and s.labels == ["negative", "positive"], "the source keeps its own layout"
    originals = {json.loads(line)["text"]: json.loads(line)["label"] for line in open(KITCHEN)}
    assert all(originals[t] == lab for t, lab in zip(s.test["text"], s.test["label"])), "0/1 mapped to the names"


def test_unlabeled_files_extend_the_target_text_without_test_copies_or_repeats(tmp_path, caplog):
    base = build_splits(DataConfig(source=BOOKS, target=KITCHEN))
    test_text, train_text = base.test["text"][0], base.unlabeled["text"][0]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["new one", test_text, "new two", "new one"]))
    lines = tmp_path / "traffic.txt"
    lines.write_text(f"logged request\n\n{train_text}\n")
    table = tmp_path / "more.csv"
    table.write_text("body\nfrom a csv\n")
    unlabeled = [str(pool), str(lines), {"path": str(table), "text_field": "body"}]
    with caplog.at_level(logging.WARNING):
        s = build_splits(DataConfig(source=BOOKS, target=KITCHEN, unlabeled=unlabeled))
    assert list(s.unlabeled["text"]) == [*base.unlabeled["text"], "new one", "new two", "logged request", "from a csv"]
    assert "data.unlabeled: dropped 1 examples that also occur in the test set" in caplog.text
    assert "dropped 2 texts already in the unlabeled corpus" in caplog.text  # the repeat and the train text
    assert s.unlabeled.column_names == ["text"] and s.test["text"] == base.test["text"]


def test_bad_unlabeled_files_name_the_problem(tmp_path):
    def splits(item):
        return build_splits(DataConfig(source=BOOKS, target=KITCHEN, unlabeled=[item]))

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        splits(str(tmp_path / "empty.jsonl"))
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="blank.txt is empty"):
        splits(str(tmp_path / "blank.txt"))
    (tmp_path / "body.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\); name its column"):
        splits(str(tmp_path / "body.jsonl"))
    with pytest.raises(DataError, match="nope.txt does not exist"):
        splits(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="neither .jsonl, .csv nor .txt"):
        (tmp_path / "x.parquet").write_text("x")
        splits(str(tmp_path / "x.parquet"))
