"""What differs between the two tasks, in one place: metric, model class, HTTP route, model inputs, tokenisation.

text-classification: one label per text; accuracy (and macro-F1).
token-classification: a BIO tag per word; the first sub-word of each word carries the word's tag and the other
sub-words are ignored (IGNORE), so metrics are per word, entity-level with seqeval.

Light on purpose: nothing heavy is imported here (transformers only inside the functions that build a model or
a collator), so the service imports these facts without pulling in training code.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

TASKS = ("text-classification", "token-classification")
IGNORE = -100  # label id the loss and the metrics skip
MAIN_METRIC = {"text-classification": "accuracy", "token-classification": "f1"}
ROUTE = {"text-classification": "/classify", "token-classification": "/extract_entities"}
# What a BERT-family model takes; a tokenizer without token types gets zeros for them.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_MODEL_CLASS = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}


def task_of(architecture: str) -> str:
    """The task of a saved model, from its config's `architectures` entry (e.g. BertForTokenClassification)."""
    return "token-classification" if "TokenClassification" in architecture else "text-classification"


def model_class(task: str):
    import transformers

    return getattr(transformers, _MODEL_CLASS[task])


def collator(task: str, tokenizer):
    # Pads each batch to its own longest sequence (never to max_length).
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == "text-classification":
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)


def tokenize(ds, tokenizer, labels: list[str], max_length: int, task: str, name: str):
    """input_ids, attention_mask, labels and length (for length grouping); warns how many were truncated."""
    label2id = {lab: i for i, lab in enumerate(labels)}
    has_labels = "label" in ds.column_names or "tags" in ds.column_names

    if task == "text-classification":

        def encode(batch):
            full = tokenizer(batch["text"], truncation=False, verbose=False)["input_ids"]
            enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
            enc["length"] = [len(x) for x in enc["input_ids"]]
            enc["truncated"] = [len(x) > max_length for x in full]
            if has_labels:
                enc["labels"] = [label2id[lab] for lab in batch["label"]]
            return enc
    else:

        def encode(batch):
            full = tokenizer(batch["tokens"], is_split_into_words=True, truncation=False, verbose=False)["input_ids"]
            enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            enc["length"] = [len(x) for x in enc["input_ids"]]
            enc["truncated"] = [len(x) > max_length for x in full]
            if has_labels:
                enc["labels"] = [_align(enc.word_ids(i), tags, label2id) for i, tags in enumerate(batch["tags"])]
            return enc

    out = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {name}")
    n_trunc = sum(out["truncated"])
    if n_trunc:
        log.warning(
            "%s: %d of %d inputs are longer than model.max_length=%d tokens and were truncated "
            "(raise model.max_length to keep them whole)",
            name,
            n_trunc,
            len(out),
            max_length,
        )
    return out.remove_columns("truncated")


def _align(word_ids: list, tags: list[str], label2id: dict) -> list[int]:
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == prev else label2id[tags[w]])
        prev = w
    return out


def texts_of(ds) -> list[str]:
    """The raw texts of rows: a text, or an NER sentence's words joined by spaces (as a client would send it)."""
    return list(ds["text"]) if "text" in ds.column_names else [" ".join(words) for words in ds["tokens"]]


def encode_texts(ds, tokenizer, max_length: int):
    """Model inputs for unlabeled rows (adaptation text, calibration text): no labels, no length column."""
    import datasets

    return datasets.Dataset.from_dict(dict(tokenizer(texts_of(ds), truncation=True, max_length=max_length)))
