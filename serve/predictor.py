"""Texts in, predictions out, for one exported artifact: what the service runs on every (merged) batch.

    predictor = Predictor(artifact_dir, threads=2)      # verifies the manifest's hashes, then loads
    predictor.classify(["Works great, easy to clean."])  # [{"label", "score", "scores", "tokens", "truncated"}]
    predictor.extract_entities(["Merkel met Obama."])    # [{"entities": [{type, text, start, end, score}], ...}]

Texts are sorted by token length and run in micro-batches padded to their own longest text, never to the
model's maximum. On a CPU the default micro-batch is one text: padding a 20-token review to a 250-token one costs
more than batching gains, and pairs of length-sorted neighbours were no faster than one by one (docs/benchmarks.md).
On a GPU, where a batch costs about what one text costs, the whole batch is one call.

On a CPU with more than one thread, an ONNX artifact also gets a one-thread session, and a batch of at least
POOL_FROM texts per thread runs on it from a pool of threads, one text per core at a time: one 100-token text
keeps two intra-op threads only partly busy, two texts on one core each keep both busy (docs/benchmarks.md).
Fewer texts than that, a lone request above all, still run one by one on all the threads, or the first of them
would use one core of several.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from domainlift import drift, manifest
from domainlift.runtime import load_runner, pad_batch
from domainlift.tasks import MODEL_INPUTS

WARM_UP_TEXT = "Warm-up text: the first calls of a fresh session allocate memory and pick kernels."
# Texts per thread from which a batch runs on the pool of one-thread calls: on 2 cores, batches of 4 texts were a tie
# and of 8 a gain (docs/benchmarks.md); in small batches the threads wait on each other's longer texts.
POOL_FROM = 4


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class Predictor:
    def __init__(
        self,
        root: Path,
        threads: int | None = None,
        micro_batch_size: int | None = None,
        max_chars: int | None = None,
        verify: bool = True,
        drift_window: int = 0,
    ):
        from transformers import AutoTokenizer

        # refuse an artifact whose files fail their hashes (verify=False: the caller checked just before)
        self.manifest = manifest.verify(root) if verify else manifest.read(root)
        self.runner = load_runner(root, threads, verify=False)
        self.tokenizer = AutoTokenizer.from_pretrained(root)  # local files only; never remote code
        self.task = self.manifest["task"]
        self.labels = list(self.manifest["labels"])
        self.max_length = int(self.manifest["config"]["model"]["max_length"])
        # None = by device: 1 on a CPU; 0 (the whole batch in one call) on a GPU.
        on_cpu = str(self.runner.device) == "cpu"
        self.micro_batch_size = micro_batch_size or (1 if on_cpu else 0)
        # ONNX Runtime releases the GIL while it runs, so one-thread calls from a pool use all the cores at once.
        self.pool = None
        if on_cpu and self.runner.runtime == "onnxruntime" and self.runner.threads > 1:
            self.one_thread = load_runner(root, 1, verify=False, device="cpu")
            self.pool = ThreadPoolExecutor(self.runner.threads, thread_name_prefix="onnx")
            self.pool_from = POOL_FROM * self.runner.threads  # micro-batches in a batch that goes to the pool
        self.max_chars = max_chars  # longer texts are cut to this (the service rejects them before, if so set)
        # Drift: the latest drift_window texts against the reference profile exported with the model, if it has one.
        profile_file = Path(root) / drift.PROFILE_FILE
        self.window = None
        if drift_window and profile_file.is_file():
            self.window = drift.Window(json.loads(profile_file.read_text()), drift_window)
        self.special_ids = set(self.tokenizer.all_special_ids)

    def warm_up(self) -> None:
        """One call per micro-batch shape class and session, so the first real request does not pay for allocation."""
        for n in sorted({1, self.micro_batch_size or 8}):  # whole batches (a GPU): warm up at 8 texts
            self._logits([WARM_UP_TEXT * 4] * n)
        if self.pool:
            self._logits([WARM_UP_TEXT * 4] * self.pool_from)

    def classify(self, texts: list[str]) -> list[dict]:
        logits, enc, truncated, lengths = self._logits(texts)
        self._watch(logits, enc)
        out = []
        for row, cut, n in zip(logits, truncated, lengths):
            p = softmax(row)
            k = int(p.argmax())
            scores = {label: float(s) for label, s in zip(self.labels, p)}
            out.append({"label": self.labels[k], "score": float(p[k]), "scores": scores, "tokens": n, "truncated": cut})
        return out

    def extract_entities(self, texts: list[str]) -> list[dict]:
        logits, enc, truncated, lengths = self._logits(texts, offsets=True)
        self._watch(logits, enc)
        out = []
        for i, text in enumerate(texts):
            words = (enc.word_ids(i), enc["offset_mapping"][i])
            entities = aggregate_entities(text, *words, softmax(logits[i]), self.labels)
            out.append({"entities": entities, "tokens": lengths[i], "truncated": truncated[i]})
        return out

    def _watch(self, logits: list[np.ndarray], enc) -> None:
        if self.window is not None:
            ids = enc["input_ids"]
            self.window.add(
                [drift.features(row, ids[i], self.labels, self.special_ids) for i, row in enumerate(logits)]
            )

    def _logits(self, texts: list[str], offsets: bool = False):
        """Per-text logits ([labels] or [tokens, labels]), the encoding, which texts were cut, token counts."""
        cut_chars = [self.max_chars is not None and len(t) > self.max_chars for t in texts]
        texts = [t[: self.max_chars] if cut else t for t, cut in zip(texts, cut_chars)]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_offsets_mapping=offsets)
        truncated = [c or bool(e.overflowing) for c, e in zip(cut_chars, enc.encodings)]
        lengths = [len(ids) for ids in enc["input_ids"]]
        columns = [c for c in MODEL_INPUTS if c in enc]  # a model without token types gets zeros
        order = np.argsort(lengths, kind="stable")
        logits: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        step = self.micro_batch_size or len(texts)
        chunks = [order[start : start + step] for start in range(0, len(order), step)]
        pad = self.tokenizer.pad_token_id
        batches = [pad_batch([{c: enc[c][i] for c in columns} for i in idx], pad) for idx in chunks]
        if self.pool and len(chunks) >= self.pool_from:
            outs = self.pool.map(self.one_thread, batches)
        else:
            outs = map(self.runner, batches)
        for idx, out in zip(chunks, outs):
            for row, i in zip(out, idx):
                logits[i] = row[: lengths[i]] if out.ndim == 3 else row
        return logits, enc, truncated, lengths


def aggregate_entities(text: str, word_ids: list, offsets: list, probs: np.ndarray, labels: list[str]) -> list[dict]:
    """BIO tags -> entity spans with character offsets into `text`.

    Each word takes the tag of its first sub-word (as in training, where only first sub-words carry a label);
    an entity starts at B-X, or at an I-X that does not continue an X (lenient, as seqeval reads it), and its
    score is the mean probability of its words' tags."""
    words = []  # [start, end, tag, prob] per word
    previous = None
    for t, w in enumerate(word_ids):
        if w is None:
            continue
        if w != previous:
            k = int(probs[t].argmax())
            words.append([offsets[t][0], offsets[t][1], labels[k], float(probs[t][k])])
        else:
            words[-1][1] = offsets[t][1]
        previous = w
    entities: list[dict] = []
    current = None
    for start, end, tag, p in words:
        prefix, _, kind = tag.partition("-")
        if prefix not in ("B", "I"):
            current = None
            continue
        if prefix == "B" or current is None or current["type"] != kind:
            current = {"type": kind, "start": start, "end": end, "probs": [p]}
            entities.append(current)
        else:
            current["end"] = end
            current["probs"].append(p)
    return [
        {
            "type": e["type"],
            "text": text[e["start"] : e["end"]],
            "start": int(e["start"]),
            "end": int(e["end"]),
            "score": float(np.mean(e["probs"])),
        }
        for e in entities
    ]
