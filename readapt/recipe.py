"""The re-adaptation loop: captured traffic -> a label-free adaptation of the served model -> export -> gate ->
promote. It runs the finetune and export stages as a user would, one after the other (it sits above them, as the
benchmarks do), and each step leaves an artifact whose manifest names its parent.

    python -m readapt --config configs/sentiment-kitchen.yaml      # = make readapt

1. served     the variant `make serve` serves now: artifacts/<job>/serve/promoted.json if a candidate was promoted
              before, else artifacts/<job>/export/<serve.variant>; its parent is the served checkpoint
2. captured   every text in serve.capture.dir (at least readapt.min_texts), written to the candidate's captured.jsonl
3. adapt      finetune job <job>-readapt-<n>: readapt.method from the served checkpoint, the captured texts as the
              only unlabeled target text, the job's labelled source data, readapt.target's test part as test set
4. export     the candidate's variants (export.variants), each verified and gated against its checkpoint
5. gate       the candidate's best variant and the served variant on the same test set (readapt.target's test
              part): promoted when candidate >= served + readapt.min_gain, else rejected (kept, never served)
6. promote    the candidate's best is imported into the BentoML model store and promoted.json points at it
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from domainlift import data as data_mod
from domainlift import manifest, metrics, tasks
from domainlift.config import JobConfig, load_config
from domainlift.errors import ConfigError, DataError, ManifestError
from domainlift.runtime import load_runner
from export import evaluate
from export.recipe import Exporter
from finetune.recipe import run as finetune
from serve.capture import read_captured
from serve.model_store import PROMOTED, import_variant, served_variant

log = logging.getLogger("readapt")


def run(config_path: str, overrides: list[str]) -> dict:
    cfg = load_config(config_path, overrides)
    r = cfg.readapt
    if r.target is None:
        raise ConfigError(
            "readapt.target is not set: name a labelled domain of the new traffic (e.g. readapt.target="
            "data/amazon-reviews/books.jsonl); its test part decides whether the adapted model is better"
        )
    if not cfg.serve.capture.dir:
        raise ConfigError("serve.capture.dir is not set: serve with traffic capture on first (docs/monitoring.md)")
    # 1. served
    served = served_variant(cfg)
    served_m = manifest.verify(served)
    served_ckpt = Path(served_m["parent"]["path"])
    if manifest.read(served_ckpt)["sha256"] != served_m["parent"]["sha256"]:
        raise ManifestError(f"{served} was exported from another checkpoint than {served_ckpt} holds now")
    # 2. captured
    texts = read_captured(Path(cfg.serve.capture.dir))
    if len(texts) < r.min_texts:
        raise DataError(
            f"{len(texts)} texts captured in {cfg.serve.capture.dir}; readapt needs at least {r.min_texts} "
            "(readapt.min_texts): let more traffic arrive with serve.capture.dir set, or lower readapt.min_texts"
        )
    n = 1 + sum(1 for _ in Path(cfg.output_dir).glob(f"{cfg.job}-readapt-*"))
    job = f"{cfg.job}-readapt-{n}"
    work = Path(cfg.output_dir) / job
    work.mkdir(parents=True, exist_ok=True)
    captured = work / "captured.jsonl"
    captured.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    log.info("readapt %s: %d captured texts, %s from %s", job, len(texts), r.method, served_ckpt)
    # 3. adapt
    candidate_overrides = [
        f"job={job}",
        f"model.path={served_ckpt}",
        f"method.name={r.method}",
        f"data.target={json.dumps(_plain(r.target))}",
        "data.target_train_unlabeled=false",
        f"data.unlabeled=[{captured}]",
    ]
    if r.method.endswith("self-train"):
        candidate_overrides.append(f"method.self_train.teacher={served_ckpt}")
    candidate_cfg = load_config(config_path, [*overrides, *candidate_overrides])
    candidate_ckpt = finetune(candidate_cfg)
    # 4. export
    report = Exporter(candidate_cfg).run(list(candidate_cfg.export.variants))
    # 5. gate: both on the same test set, the target's test part
    metric = tasks.MAIN_METRIC[cfg.data.task]
    served_score = score(served, candidate_cfg)
    best = report["best"]
    candidate_score = next(row["metric"] for row in report["rows"] if row["variant"] == best) if best else None
    promoted = best is not None and candidate_score >= served_score + r.min_gain
    decision = {
        "job": job,
        "metric": metric,
        "test_set": data_mod.domain_path(r.target),
        "captured_texts": len(texts),
        "method": r.method,
        "served": {"variant_dir": str(served), "sha256": served_m["sha256"], "score": served_score},
        "candidate": {
            "variant_dir": str(candidate_cfg.job_dir / "export" / best) if best else None,
            "checkpoint": str(candidate_ckpt),
            "parent_sha256": served_m["parent"]["sha256"],
            "score": candidate_score,
        },
        "min_gain": r.min_gain,
        "promoted": promoted,
    }
    # 6. promote
    if promoted:
        decision["candidate"]["tag"] = promote(cfg, candidate_cfg.job_dir / "export" / best, served, decision)
    (work / "readapt.json").write_text(json.dumps(decision, indent=2) + "\n")
    verdict = "promoted: the next `make serve` serves it" if promoted else "rejected: kept, not served"
    log.info(
        "%s on %s: served %.4f, candidate %s -> %s",
        metric,
        decision["test_set"],
        served_score,
        f"{candidate_score:.4f}" if candidate_score is not None else "none passed the export gate",
        verdict,
    )
    return decision


def promote(cfg: JobConfig, candidate: Path, served: Path, decision: dict) -> str:
    """Import the candidate variant into the model store and make it what `make serve` serves for cfg's job. Only a
    candidate adapted from the served model's checkpoint may replace it. Returns its model-store tag."""
    candidate_parent = manifest.read(candidate)["parent"]  # the candidate's checkpoint
    lineage = manifest.read(Path(candidate_parent["path"]))["parent"]["sha256"]  # what that checkpoint started from
    served_parent = manifest.read(served)["parent"]
    if lineage != served_parent["sha256"]:
        raise ManifestError(
            f"{candidate} was not adapted from the served model's checkpoint ({served_parent['path']}): it cannot "
            "replace it; run `make readapt` from the served model"
        )
    tag = import_variant(candidate)
    promoted_file = cfg.job_dir / "serve" / PROMOTED
    promoted_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = promoted_file.with_suffix(".tmp")
    record = {**decision["candidate"], "variant_dir": str(candidate), "tag": tag, "replaces": str(served.resolve())}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(promoted_file)  # atomic: `make serve` sees the old or the new promotion, never half of one
    return tag


def score(variant_dir: Path, cfg: JobConfig) -> float:
    """The main metric of an exported variant on cfg's test set (its target's test part)."""
    from transformers import AutoTokenizer

    m = manifest.read(variant_dir)
    labels, task = list(m["labels"]), cfg.data.task
    tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    test = tasks.tokenize(data_mod.build_splits(cfg.data).test, tokenizer, labels, cfg.model.max_length, task, "test")
    logits = evaluate.predict(load_runner(variant_dir, verify=False), test, tokenizer)
    return metrics.metrics_fn(task, labels)((logits, evaluate.label_matrix(test)))[tasks.MAIN_METRIC[task]]


def _plain(domain):
    """A domain setting as it can be written back as a YAML override."""
    return domain if isinstance(domain, str) else {k: v for k, v in vars(domain).items() if v is not None}
