"""Data: read JSONL / CSV / two-column CoNLL through `datasets`, then apply the domain protocol.

Domain protocol (Blitzer et al. 2007 splits, as used for the Amazon reviews):
  a single-file domain splits into train (1600) + test (400), seeded and stratified by label;
  source domain -> train = its train part, dev = its held-out part;
  target domain -> its train part is *unlabelled* adaptation text, its test part is the test set,
                   never seen in any form in training;
  source == target -> dev is carved out of the train part, the test set stays untouched.
A directory domain (CrossNER) brings its own train.<ext> / dev.<ext> / test.<ext>.

Every record carries `text` + `label` (classification) or `tokens` + `tags` (NER).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from domainlift.config import DataConfig
from domainlift.errors import DataError

log = logging.getLogger(__name__)

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "conll", ".conll": "conll"}
_BIO = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class Splits:
    train: datasets.Dataset  # labelled source training data
    dev: datasets.Dataset  # labelled, for early stopping and model selection
    test: datasets.Dataset  # labelled target test data, never trained on
    unlabeled: datasets.Dataset  # target-domain inputs without labels (for adaptation methods)
    labels: list[str]  # class names, or BIO tags for NER


# ---- readers ---------------------------------------------------------------------------------------


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    if path.suffix.lower() in _EXTENSIONS:
        return _EXTENSIONS[path.suffix.lower()]
    raise DataError(
        f"{path}: cannot tell the format from the extension {path.suffix!r}; set data.format to jsonl, csv or conll"
    )


def read_labelled(path: Path, cfg: DataConfig) -> datasets.Dataset:
    """One labelled file as a Dataset with text/label (classification) or tokens/tags (NER)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; check data.source / data.target in the config "
            "(paths are relative to the directory you run from)"
        )
    fmt = detect_format(path, cfg.format)
    if cfg.task == "token-classification":
        if fmt != "conll":
            raise DataError(
                f"{path}: token-classification reads two-column CoNLL (token TAB tag); "
                f"got format {fmt}. Convert the file or set data.format: conll"
            )
        return read_conll(path)
    if fmt == "conll":
        raise DataError(f"{path}: CoNLL files are for token-classification; set data.task or data.format")
    return _read_table(path, fmt, cfg.text_field, cfg.label_field)


def _read_table(path: Path, fmt: str, text_field: str, label_field: str) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset("json" if fmt == "jsonl" else "csv", data_files=str(path), split="train")
    except Exception as e:  # datasets' own error does not say which line is broken
        raise DataError(f"{path}: could not be read as {fmt}: {_first_bad_line(path, fmt) or e}") from e
    for field, key in ((text_field, "data.text_field"), (label_field, "data.label_field")):
        if field not in ds.column_names:
            raise DataError(
                f"{path} has no column {field!r} (columns: {', '.join(ds.column_names)}); "
                f"set {key} to the column that holds it"
            )
    ds = ds.select_columns([text_field, label_field])
    ds = (
        ds.rename_columns({text_field: "text", label_field: "label"})
        if text_field != "text" or label_field != "label"
        else ds
    )
    missing_labels = [i for i, lab in enumerate(ds["label"]) if lab is None or str(lab).strip() == ""]
    if missing_labels:
        raise DataError(
            f"{path}: {len(missing_labels)} rows have no {label_field!r} value "
            f"(first at row {missing_labels[0] + 1}); label them or remove them"
        )
    n = len(ds)
    ds = ds.filter(lambda r: isinstance(r["text"], str) and r["text"].strip() != "")
    if len(ds) < n:
        log.warning("%s: dropped %d of %d rows whose %r is empty or whitespace-only", path, n - len(ds), n, text_field)
    if len(ds) == 0:
        raise DataError(f"{path}: no rows with text in column {text_field!r}")
    # Labels are class names; integers in a CSV become their string form so one label space fits all files.
    return ds.cast_column("label", datasets.Value("string"))


def _first_bad_line(path: Path, fmt: str) -> str | None:
    if fmt != "jsonl":
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"line {lineno} is not valid JSON ({e.msg}); each line must be one JSON object"
    return None


def read_conll(path: Path) -> datasets.Dataset:
    """Two-column CoNLL: `token<TAB>tag` per line, a blank line between sentences, BIO tags."""
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            if parts[0] == "-DOCSTART-":
                continue
            if len(parts) != 2 or not _BIO.match(parts[1]):
                raise DataError(
                    f"{path}:{lineno}: malformed CoNLL line {line.rstrip()!r}; expected "
                    "'token<TAB>tag' with a BIO tag such as O, B-person or I-person"
                )
            tokens.append(parts[0])
            tags.append(parts[1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("string"))}
    )
    return datasets.Dataset.from_list(sentences, features=features)


# ---- the domain protocol ---------------------------------------------------------------------------


def load_domain(path: str, cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """{'train', 'test'[, 'dev']} for one domain: a directory's own files, or a seeded split of one file."""
    p = Path(path)
    if p.is_dir():
        found = {}
        for split in ("train", "dev", "test"):
            files = sorted(f for f in p.glob(f"{split}.*") if f.suffix.lower() in _EXTENSIONS)
            if files:
                found[split] = read_labelled(files[0], cfg)
        for split in ("train", "test"):
            if split not in found:
                raise DataError(
                    f"domain directory {p} has no {split}.jsonl/.csv/.txt; "
                    "a directory domain needs train and test files (dev optional)"
                )
        return found
    ds = read_labelled(p, cfg)
    parts = _split(ds, cfg.test_size, cfg, what=f"data.test_size for {p}")
    return {"train": parts["train"], "test": parts["test"]}


def _split(ds: datasets.Dataset, size, cfg: DataConfig, what: str) -> datasets.DatasetDict:
    n = len(ds)
    if isinstance(size, int) and size >= n:
        raise DataError(f"{what} is {size} but there are only {n} examples; lower it or use a fraction")
    stratify = None
    if cfg.task == "text-classification":
        ds = ds.class_encode_column("label")
        stratify = "label"
    try:
        parts = ds.train_test_split(test_size=size, seed=cfg.seed, stratify_by_column=stratify)
    except ValueError as e:  # e.g. a class with a single example cannot be stratified
        raise DataError(f"cannot split for {what}: {e}") from e
    if stratify:  # back to plain strings: each split keeps the same label space
        names = ds.features["label"].names
        parts = parts.map(
            lambda r: {"label": [names[i] for i in r["label"]]},
            batched=True,
            features=datasets.Features(
                {
                    **{k: v for k, v in parts["train"].features.items() if k != "label"},
                    "label": datasets.Value("string"),
                }
            ),
        )
    return parts


def build_splits(cfg: DataConfig) -> Splits:
    source = load_domain(cfg.source, cfg)
    same = Path(cfg.source).resolve() == Path(cfg.target).resolve()
    target = source if same else load_domain(cfg.target, cfg)

    train = source["train"]
    if "dev" in source:
        dev = source["dev"]
    elif same:  # carve dev out of train so the test set stays untouched
        parts = _split(train, cfg.dev_size, cfg, what=f"data.dev_size for {cfg.source}")
        train, dev = parts["train"], parts["test"]
    else:
        dev = source["test"]
    test = target["test"]
    # Real corpora repeat themselves (the Amazon files hold 22-43 reviews twice): a copy of a test example
    # in training data would leak the test set, so copies are dropped from everything but the test set.
    train, dev, target_train = (
        _drop_overlap(ds, test, name) for ds, name in ((train, "train"), (dev, "dev"), (target["train"], "target"))
    )
    if cfg.target_labelled:  # few-shot: some target labels join the source's
        if same:
            raise DataError("data.target_labelled adds target labels to the source's, but the target is the source")
        parts = _split(target_train, cfg.target_labelled, cfg, what="data.target_labelled")
        target_train = parts["train"]
        few = parts["test"].cast(train.features)
        train = datasets.concatenate_datasets([train, few])
        log.info("few-shot: %d labelled target examples added to %d source examples", len(few), len(train) - len(few))
    unlabeled = target_train.remove_columns([c for c in ("label", "tags") if c in target_train.column_names])

    train = cap(train, cfg.max_train_samples, cfg.seed)
    if cfg.augment != "none":
        train = augment(train, cfg.augment, cfg.augment_prob, cfg.augment_copies, cfg.seed)
    dev = cap(dev, cfg.max_eval_samples, cfg.seed)
    test = cap(test, cfg.max_eval_samples, cfg.seed)
    labels = label_space(train, cfg.task)
    check_labels_seen(labels, {"dev": dev, "test": test}, cfg)
    return Splits(train=train, dev=dev, test=test, unlabeled=unlabeled, labels=labels)


def augment(ds: datasets.Dataset, how: str, prob: float, copies: int, seed: int) -> datasets.Dataset:
    """ds plus `copies` altered copies of each text: each word deleted ("delete", at least one word stays), or
    about prob * words random swaps of two words ("swap"). The label is the original's, always."""
    rng = random.Random(seed)

    def alter(text: str) -> str:
        words = text.split()
        if how == "delete":
            kept = [w for w in words if rng.random() >= prob]
            return " ".join(kept or [rng.choice(words)]) if words else text
        for _ in range(max(1, round(prob * len(words))) if len(words) > 1 else 0):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)

    rows = [{**r, "text": alter(r["text"])} for _ in range(copies) for r in ds]
    extra = datasets.Dataset.from_list(rows, features=ds.features)
    log.info("augment (%s, p=%s): %d altered copies added to %d training texts", how, prob, len(extra), len(ds))
    return datasets.concatenate_datasets([ds, extra])


def _key(row: dict) -> str:
    return row["text"] if "text" in row else "\x1f".join(row["tokens"])


def _drop_overlap(ds: datasets.Dataset, test: datasets.Dataset, name: str) -> datasets.Dataset:
    test_keys = {_key(r) for r in test}
    kept = ds.filter(lambda r: _key(r) not in test_keys)
    if len(kept) < len(ds):
        log.warning(
            "%s: dropped %d examples that also occur in the test set (duplicates in the data)",
            name,
            len(ds) - len(kept),
        )
    return kept


def cap(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def label_space(train: datasets.Dataset, task: str) -> list[str]:
    if task == "text-classification":
        return sorted(set(train["label"]))
    # NER: O plus B-/I- for every entity type seen in training, so an I- tag missing only by chance still has a slot.
    types = sorted({t[2:] for tags in train["tags"] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def check_labels_seen(labels: list[str], splits: dict[str, datasets.Dataset], cfg: DataConfig) -> None:
    known = set(labels)
    for name, ds in splits.items():
        seen = set(ds["label"]) if cfg.task == "text-classification" else {t for tags in ds["tags"] for t in tags}
        unseen = sorted(seen - known)
        if unseen:
            where = cfg.target if name == "test" else cfg.source
            raise DataError(
                f"{where}: the {name} set has labels never seen in training: {', '.join(unseen)}. "
                "Add training examples with these labels, or remove them from the evaluation data"
            )
