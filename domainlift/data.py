"""Data: read JSONL / CSV / two-column CoNLL through `datasets`, then apply the domain protocol.

Domain protocol (Blitzer et al. 2007 splits, as used for the Amazon reviews):
  a single-file domain splits into train (1600) + test (400), seeded and stratified by label;
  source domain -> train = its train part, dev = its held-out part;
  target domain -> its train part is *unlabelled* adaptation text, its test part is the test set,
                   never seen in any form in training;
  source == target -> dev is carved out of the train part, the test set stays untouched.
A directory domain (CrossNER) brings its own train.<ext> / dev.<ext> / test.<ext>.

Each domain may bring its own file layout (format, text/label columns, a map of its labels onto the source's
label names); the target's unlabeled text can be extended with files of unlabeled text (data.unlabeled).
Every record carries `text` + `label` (classification) or `tokens` + `tags` (NER); unlabeled rows only the text.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from domainlift.config import DataConfig, DomainConfig
from domainlift.errors import DataError

log = logging.getLogger(__name__)

_EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "conll", ".conll": "conll"}
_BIO = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class Splits:
    train: datasets.Dataset  # labelled source training data
    dev: datasets.Dataset  # labelled, for early stopping and model selection
    test: datasets.Dataset  # labelled target test data, never trained on
    unlabeled: datasets.Dataset  # target-domain inputs without labels: its train part, then data.unlabeled
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


def layout(domain: str | DomainConfig, cfg: DataConfig) -> DomainConfig:
    """A domain with every layout field filled: its own where its mapping sets one, else the data section's."""
    d = domain if isinstance(domain, DomainConfig) else DomainConfig(path=str(domain))
    return DomainConfig(
        path=d.path,
        format=d.format or cfg.format,
        text_field=d.text_field or cfg.text_field,
        label_field=d.label_field or cfg.label_field,
        label_map={str(k): str(v) for k, v in d.label_map.items()} if d.label_map else None,
    )


def domain_path(domain: str | DomainConfig) -> str:
    return domain.path if isinstance(domain, DomainConfig) else str(domain)


def read_labelled(path: Path, cfg: DataConfig, domain: DomainConfig | None = None) -> datasets.Dataset:
    """One labelled file as a Dataset with text/label (classification) or tokens/tags (NER); `domain` is the
    layout of the domain the file belongs to (default: the data section's)."""
    path = Path(path)
    d = domain or layout(str(path), cfg)
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; check data.source / data.target in the config "
            "(paths are relative to the directory you run from)"
        )
    fmt = detect_format(path, d.format)
    if cfg.task == "token-classification":
        if fmt != "conll":
            raise DataError(
                f"{path}: token-classification reads two-column CoNLL (token TAB tag); "
                f"got format {fmt}. Convert the file or set data.format: conll"
            )
        return read_conll(path)
    if fmt == "conll":
        raise DataError(f"{path}: CoNLL files are for token-classification; set data.task or data.format")
    return _read_table(path, fmt, d)


def _load_table(path: Path, fmt: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset("json" if fmt == "jsonl" else "csv", data_files=str(path), split="train")
    except Exception as e:  # datasets' own error does not say which line is broken
        raise DataError(f"{path}: could not be read as {fmt}: {_first_bad_line(path, fmt) or e}") from e


def _read_table(path: Path, fmt: str, d: DomainConfig) -> datasets.Dataset:
    text_field, label_field = d.text_field, d.label_field
    ds = _load_table(path, fmt)
    for field, key in ((text_field, "text_field"), (label_field, "label_field")):
        if field not in ds.column_names:
            raise DataError(
                f"{path} has no column {field!r} (columns: {', '.join(ds.column_names)}); "
                f"set data.{key} to the column that holds it (or, for this domain alone, "
                f"data.source / data.target: {{path: {path}, {key}: <column>}})"
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
    ds = ds.cast_column("label", datasets.Value("string"))
    if d.label_map:
        label_map = d.label_map
        ds = ds.map(lambda r: {"label": label_map.get(r["label"], r["label"])}, desc=f"label_map {path.name}")
    return ds


def read_unlabeled(items: list, d: DomainConfig, task: str, key: str = "data.unlabeled") -> datasets.Dataset:
    """data.unlabeled (or another key of its form, named in the errors): the texts of JSONL/CSV files or plain text
    files (.txt, one text per line), in order, as rows of `text` (or `tokens`, the text split on whitespace, for
    NER). An item is a path (its texts are in the target's text field, d.text_field) or a mapping {path, text_field,
    format} for a file with a column of its own, or a CoNLL file whose sentences are the texts (format: conll; its
    tags are never read)."""
    texts: list[str] = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"path", "text_field", "format"}
            if "path" not in item or unknown:
                raise DataError(
                    f"{key}: {item} must be a path or a mapping {{path: ..., text_field: ..., format: ...}}"
                )
            p, field, fmt = Path(item["path"]), item.get("text_field") or d.text_field, item.get("format")
        else:
            p, field, fmt = Path(item), d.text_field, None
        if not p.is_file():
            raise DataError(f"{key}: {p} does not exist (paths are relative to the directory you run from)")
        suffix = p.suffix.lower()
        fmt = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "text", ".conll": "conll"}.get(suffix)
        if fmt not in ("jsonl", "csv", "text", "conll"):
            raise DataError(
                f"{key}: {p} is neither .jsonl, .csv nor .txt (plain text, one text per line); "
                "for a CoNLL file say {path: ..., format: conll}"
            )
        if not p.read_text(encoding="utf-8", errors="replace").strip():
            raise DataError(f"{key}: {p} is empty; fill it or remove it from {key}")
        if fmt == "conll":
            found = [" ".join(tokens) for tokens in read_conll(p)["tokens"]]
        elif fmt == "text":
            found = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        else:
            ds = _load_table(p, fmt)
            if field not in ds.column_names:
                raise DataError(
                    f"{key}: {p} has no column {field!r} (columns: {', '.join(ds.column_names)}); "
                    f"name its column: {key}: [{{path: {p}, text_field: <column>}}]"
                )
            found = [t.strip() if isinstance(t, str) else "" for t in ds[field]]
        kept = [t for t in found if t]
        if len(kept) < len(found):
            log.warning("%s: %s: dropped %d of %d empty texts", key, p, len(found) - len(kept), len(found))
        if not kept:
            raise DataError(f"{key}: {p} holds no text; fill it or remove it from {key}")
        texts += kept
    if task == "token-classification":
        features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string"))})
        return datasets.Dataset.from_dict({"tokens": [t.split() for t in texts]}, features=features)
    return datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))


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


def load_domain(domain: str | DomainConfig, cfg: DataConfig) -> dict[str, datasets.Dataset]:
    """{'train', 'test'[, 'dev']} for one domain: a directory's own files, or a seeded split of one file."""
    d = layout(domain, cfg)
    p = Path(d.path)
    if p.is_dir():
        found = {}
        for split in ("train", "dev", "test"):
            files = sorted(f for f in p.glob(f"{split}.*") if f.suffix.lower() in _EXTENSIONS)
            if files:
                found[split] = read_labelled(files[0], cfg, d)
        for split in ("train", "test"):
            if split not in found:
                raise DataError(
                    f"domain directory {p} has no {split}.jsonl/.csv/.txt; "
                    "a directory domain needs train and test files (dev optional)"
                )
        return found
    ds = read_labelled(p, cfg, d)
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
    same = Path(domain_path(cfg.source)).resolve() == Path(domain_path(cfg.target)).resolve()
    target = source if same else load_domain(cfg.target, cfg)

    train = source["train"]
    if "dev" in source:
        dev = source["dev"]
    elif same:  # carve dev out of train so the test set stays untouched
        parts = _split(train, cfg.dev_size, cfg, what=f"data.dev_size for {domain_path(cfg.source)}")
        train, dev = parts["train"], parts["test"]
    else:
        dev = source["test"]
    test = target["test"]
    # Real corpora repeat themselves (the Amazon files hold 22-43 reviews twice): a copy of a test example
    # in training data would leak the test set, so copies are dropped from everything but the test set.
    train, dev, target_train = (
        drop_overlap(ds, test, name) for ds, name in ((train, "train"), (dev, "dev"), (target["train"], "target"))
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
    if not cfg.target_train_unlabeled:
        unlabeled = unlabeled.select([])
    if cfg.unlabeled:
        unlabeled = _add_unlabeled(unlabeled, read_unlabeled(cfg.unlabeled, layout(cfg.target, cfg), cfg.task), test)

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


def _add_unlabeled(unlabeled: datasets.Dataset, extra: datasets.Dataset, test: datasets.Dataset) -> datasets.Dataset:
    """The target's unlabeled train texts, then the data.unlabeled texts that are neither a test text (that would
    leak the test set into adaptation) nor already in the corpus; each drop is counted in a warning."""
    extra = drop_overlap(extra, test, "data.unlabeled")
    seen = {text_key(r) for r in unlabeled}
    keep = []
    for i, row in enumerate(extra):
        key = text_key(row)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) < len(extra):
        log.warning("data.unlabeled: dropped %d texts already in the unlabeled corpus", len(extra) - len(keep))
    extra = extra.select(keep).cast(unlabeled.features)
    log.info("unlabeled target text: %d of the target's train part + %d of data.unlabeled", len(unlabeled), len(extra))
    return datasets.concatenate_datasets([unlabeled, extra])


def text_key(row: dict) -> str:
    return row["text"] if "text" in row else "\x1f".join(row["tokens"])


def drop_overlap(
    ds: datasets.Dataset, test: datasets.Dataset, name: str, what: str = "the test set"
) -> datasets.Dataset:
    """ds without the rows whose text is also in `test` (a test set, or other texts that must stay unseen)."""
    test_keys = {text_key(r) for r in test}
    kept = ds.filter(lambda r: text_key(r) not in test_keys)
    if len(kept) < len(ds):
        log.warning(
            "%s: dropped %d examples that also occur in %s (duplicates in the data)", name, len(ds) - len(kept), what
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
            where = domain_path(cfg.target if name == "test" else cfg.source)
            raise DataError(
                f"{where}: the {name} set has labels never seen in training: {', '.join(unseen)}. "
                "Add training examples with these labels, remove them from the evaluation data, or map this "
                f"domain's labels onto the training labels ({', '.join(labels)}) with a label_map, e.g. "
                "data.target: {path: ..., label_map: {0: negative, 1: positive}}"
            )
