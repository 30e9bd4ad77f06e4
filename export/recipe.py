"""The export recipe: setup -> build or reuse each variant (verified) -> time them all -> report + `best`.

    python -m export --config configs/sentiment-kitchen.yaml [--variants onnx-int8-dynamic,onnx-int4] [--force]

Reads artifacts/<job>/checkpoint/ (manifest verified), writes artifacts/<job>/export/<variant>/ (model files,
tokenizer, manifest.json with parent hash, recipe, files, measured quality), then export/report.{md,json}
and the symlink export/best -> the fastest variant that passes the accuracy gate.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
from transformers import AutoTokenizer

from domainlift import data as data_mod
from domainlift import drift, manifest, quality, tasks
from domainlift.config import JobConfig
from domainlift.errors import ConfigError, ExportError, ManifestError
from domainlift.runtime import TorchRunner, load_runner, runtime_of
from export import build, evaluate, prune, student, variants
from export.report import write_report

log = logging.getLogger("export")
REFERENCE = "checkpoint (PyTorch fp32)"


class Exporter:
    def __init__(self, cfg: JobConfig, force: bool = False):
        self.cfg, self.force = cfg, force
        self.ckpt = cfg.job_dir / "checkpoint"
        self.out = cfg.job_dir / "export"
        if not self.ckpt.is_dir():
            raise ManifestError(f"no checkpoint at {self.ckpt}; run `make finetune JOB={cfg.job}` first")
        manifest.verify(self.ckpt)
        self.parent = manifest.parent_info(self.ckpt)
        self.task = cfg.data.task
        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt)
        model_cfg = json.loads((self.ckpt / "config.json").read_text())
        self.labels = [model_cfg["id2label"][str(i)] for i in range(len(model_cfg["id2label"]))]
        self.num_layers = model_cfg.get("num_hidden_layers", 0)
        self.splits = data_mod.build_splits(cfg.data)
        self.test = self.encode(self.splits.test, "test")
        self.gold = evaluate.label_matrix(self.test)
        self.held_out, self.pool = self._split_unlabeled()
        # read now, so that a bad file is an error before any variant is built
        self.student_extra = self._student_extra() if cfg.export.student_unlabeled else None
        self.threads = cfg.export.latency_threads or os.cpu_count()
        self.work = Path(tempfile.mkdtemp(prefix="domainlift-export-"))
        self.graphs = variants.Graphs(self.work, self.task, cfg.export.opset, self._calibration)
        self._made: dict[tuple, Path] = {}  # students and pruned models, made once per run
        self._drift_texts = self._held_out_ref = None

    def encode(self, ds, name: str):
        return tasks.tokenize(ds, self.tokenizer, self.labels, self.cfg.model.max_length, self.task, name)

    def run(self, names: list[str]) -> dict:
        """Build (or reuse) every named variant, time them with the checkpoint, write the report and `best`."""
        try:
            chosen = [variants.parse(n, self.cfg) for n in names]  # every name checked before any work
            self._check(chosen)
            metric = tasks.MAIN_METRIC[self.task]
            log.info("reference: checkpoint in PyTorch fp32 eager, %d test examples", len(self.test))
            ref_logits = self.checkpoint_logits(self.test)
            ref_quality = evaluate.compare(self.task, self.labels, ref_logits, ref_logits, self.gold)
            size = weights_bytes(self.ckpt)
            rows = [{"variant": REFERENCE, "status": "reference", "runtime": "torch", "size_bytes": size}]
            rows[0].update(_row(ref_quality, metric))
            rows += [self.build_or_reuse(v, ref_logits, ref_quality, metric) for v in chosen]
            self.time_rows(rows)
            report = self._report(rows, metric)
        finally:  # the scratch graphs and pruned models go, whatever happened (GBs in /tmp otherwise)
            shutil.rmtree(self.work, ignore_errors=True)
        failed = [r["variant"] for r in rows if r["status"] == "failed"]
        if failed:
            raise ExportError(f"variants failed to build: {', '.join(failed)} (see {self.out / 'report.md'})")
        return report

    def compare(self, other: Path) -> dict:
        """The gate's measures of another model directory (a checkpoint or an exported variant) against this job's
        checkpoint, e.g. the same job fine-tuned with another seed: what agreement a plain retrain reaches, to set
        export.min_agreement against."""
        try:
            other_cfg = Path(other) / "config.json"
            if not other_cfg.is_file():
                raise ConfigError(f"--compare {other}: no model there (no config.json); give a checkpoint directory "
                                  f"such as artifacts/<job>/checkpoint, or an exported variant's")  # fmt: skip
            other_labels = json.loads(other_cfg.read_text()).get("id2label", {})
            if {int(i): name for i, name in other_labels.items()} != dict(enumerate(self.labels)):
                raise ConfigError(f"--compare {other}: its labels {list(other_labels.values())} are not the "
                                  f"checkpoint's {self.labels}, so their answers cannot be compared")  # fmt: skip
            return self.measure(self.runner(other), self.checkpoint_logits(self.test))
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _check(self, chosen: list[variants.Variant]) -> None:
        prune_layers = self.cfg.export.prune_layers
        if prune_layers and any(v.prune_pct for v in chosen) and prune_layers >= self.num_layers:
            raise ConfigError(
                f"export.prune_layers is {prune_layers} but the model has {self.num_layers} layers; "
                f"remove at most {self.num_layers - 1}"
            )
        too_deep = [v.name for v in chosen if v.student_layers and v.student_layers >= self.num_layers]
        if too_deep:
            raise ConfigError(
                f"{', '.join(too_deep)}: a student needs fewer layers than the checkpoint's {self.num_layers}"
            )
        if any(v.base and v.base.startswith("onnx") for v in chosen):
            build.check_onnx_support(self.ckpt, self.task)

    # ---- building ------------------------------------------------------------------------------------

    def build_or_reuse(self, v: variants.Variant, ref_logits, ref_quality: dict, metric: str) -> dict:
        """The variant's report row: built, verified against the checkpoint and gated; or found up to date; or
        skipped (cannot be built on this machine); or failed (reported; one broken variant must not sink the rest)."""
        reason = v.unavailable()
        if reason:
            log.warning("%s: skipped, %s", v.name, reason)
            return {"variant": v.name, "status": "skipped", "reason": reason}
        m = self.up_to_date(v)
        try:
            if m is None:
                log.info("%s: building", v.name)
                with manifest.atomic_dir(self.out / v.name, overwrite=True) as tmp:
                    self.build(v, tmp)
                    runner = self.runner(tmp)
                    quality = self.measure(runner, ref_logits)
                    drift_texts = self.drift_texts()
                    if len(drift_texts):  # the reference the service compares its traffic with
                        profile = evaluate.drift_profile(runner, drift_texts, self.tokenizer, self.labels)
                        (tmp / drift.PROFILE_FILE).write_text(json.dumps(profile) + "\n")
                    self._gate(quality, ref_quality, metric)
                    manifest.write(
                        tmp,
                        kind="variant",
                        config=self.cfg.to_dict(),
                        parent=self.parent,
                        quality=quality,
                        recipe=v.recipe,
                        task=self.task,
                        variant=v.name,
                        runtime=runtime_of(tmp),
                        labels=self.labels,
                    )
                m = manifest.read(self.out / v.name)
            else:
                log.info("%s: up to date (same parent and recipe), not rebuilt", v.name)
                m["quality"].pop("reason", None)
                self._gate(m["quality"], ref_quality, metric)  # today's export.min_accuracy_ratio decides
        except Exception as e:  # reported in its row and, at the end, as an ExportError
            reason = f"{type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                reason = (
                    f"out of disk space ({e}): free space where the export writes ({self.out}, and {self.work} "
                    "for its scratch graphs) and run `make export` again"
                )
            log.error("%s: failed: %s", v.name, reason)
            return {"variant": v.name, "status": "failed", "reason": reason}
        q = m["quality"]
        return {
            "variant": v.name,
            "status": "accepted" if q["accepted"] else "rejected",
            "runtime": m["runtime"],
            "size_bytes": weights_bytes(self.out / v.name),
            "reason": q.get("reason", ""),
            **_row(q, metric),
        }

    def build(self, v: variants.Variant, out: Path) -> None:
        src = self.student(v.student_layers) if v.student_layers else self.ckpt
        if v.prune_pct:
            src = self.pruned(src, v.prune_pct, whole_layers=0 if v.student_layers else self.cfg.export.prune_layers)
        if v.base is None:  # the pruned PyTorch model itself
            for f in src.iterdir():
                shutil.copy2(f, out / f.name)
            return
        for info in ("student.json", "pruning.json"):
            if (src / info).is_file():
                shutil.copy2(src / info, out / info)
        variants.BASES[v.base].build(self.graphs, src, out, self.cfg.export)

    def pruned(self, src: Path, pct: int, whole_layers: int) -> Path:
        """`src` (the checkpoint or a student) pruned by pct and recovered, made once per run for its variants."""
        key = ("pruned", str(src), pct)
        if key not in self._made:
            dev, train = self.encode(self.splits.dev, "dev"), self.encode(self.splits.train, "train")
            out = self.work / f"{src.name}-pruned-{pct}"
            self._made[key] = prune.pruned_model(src, self.cfg, dev, train, self.tokenizer, out, pct, whole_layers)
        return self._made[key]

    def student(self, layers: int) -> Path:
        """The distilled student with this many layers, made once per run for its variants."""
        key = ("student", layers)
        if key not in self._made:
            parts = [self.splits.train.select_columns(self.pool.column_names), self.pool]
            if self.student_extra is not None:
                parts.append(self.student_extra)
            texts = datasets.concatenate_datasets(parts)
            first = {data_mod.text_key(r): i for i, r in reversed(list(enumerate(texts)))}  # each text once
            texts = self.encode(texts.select(sorted(first.values())), "distillation texts")
            self._made[key] = student.student_model(self.ckpt, self.cfg, texts, self.tokenizer,
                                                    self.work / f"student-{layers}", layers)  # fmt: skip
        return self._made[key]

    def _student_extra(self):
        """export.student_unlabeled's texts, less any test or held-out text (they must stay unseen to measure)."""
        cfg = self.cfg.data
        key = "export.student_unlabeled"
        extra = data_mod.read_unlabeled(
            self.cfg.export.student_unlabeled, data_mod.layout(cfg.target, cfg), cfg.task, key
        )
        extra = data_mod.drop_overlap(extra, self.splits.test, key)
        extra = data_mod.drop_overlap(extra, self.held_out, key, "the held-out agreement texts")
        log.info("%s: %d more texts to distil students on", key, len(extra))
        return extra.cast(self.pool.features)

    def _split_unlabeled(self):
        """(held out, the rest) of the target's unlabeled text: the last export.agreement_samples texts that are not
        source training texts measure agreement; the rest distil, calibrate and make the drift reference. At most half
        is held out, so a small corpus still leaves texts for those."""
        unlabeled = self.splits.unlabeled
        seen = {data_mod.text_key(r) for r in self.splits.train}
        fresh = [i for i, r in enumerate(unlabeled) if data_mod.text_key(r) not in seen]
        held = set(fresh[len(fresh) - min(self.cfg.export.agreement_samples, len(fresh) // 2) :])
        rest = [i for i in range(len(unlabeled)) if i not in held]
        return unlabeled.select(sorted(held)), unlabeled.select(rest)

    def unlabeled(self, n: int, name: str):
        """The first n texts of the target domain's unlabeled text (not the held-out ones), tokenized."""
        return self.encode(self.pool.select(range(min(n, len(self.pool)))), name)

    def drift_texts(self):
        """The target-domain texts every variant's drift reference is computed on (tokenized once)."""
        if self._drift_texts is None:
            self._drift_texts = self.unlabeled(self.cfg.export.drift_samples, "drift reference")
        return self._drift_texts

    def _calibration(self) -> list[dict]:
        """onnx-int8-static's calibration batches: target-domain unlabeled text, one text per batch."""
        calib = self.unlabeled(self.cfg.export.calibration_samples, "calibration")
        return [b for _, b in evaluate.batches(calib, self.tokenizer, size=1)]

    def up_to_date(self, v: variants.Variant) -> dict | None:
        d = self.out / v.name
        if self.force or not (d / manifest.MANIFEST).is_file():
            return None
        try:
            m = manifest.verify(d)
        except ManifestError as e:
            log.warning("%s: rebuilding, %s", v.name, e)
            return None
        same = m.get("parent", {}).get("sha256") == self.parent["sha256"] and m.get("recipe") == v.recipe
        return m if same else None

    # ---- verifying and timing ------------------------------------------------------------------------

    def runner(self, root: Path):
        return load_runner(root, self.threads, verify=False)  # verified once, when built or found up to date

    def measure(self, runner, ref_logits) -> dict:
        """Test metric, agreement and |Δlogit| against the checkpoint, the ratio's bootstrap interval, and the
        agreement on the held-out target texts."""
        logits = evaluate.predict(runner, self.test, self.tokenizer)
        out = evaluate.compare(self.task, self.labels, logits, ref_logits, self.gold)
        out["ratio_ci95"] = quality.ratio_interval(self.task, self.labels, logits, ref_logits, self.gold)
        if len(self.held_out):
            held, held_ref = self.held_out_reference()
            out["unlabeled_agreement"] = quality.agreement(
                evaluate.predict(runner, held, self.tokenizer), held_ref, held["length"]
            )
            out["unlabeled_texts"] = len(held)
        return out

    def checkpoint_logits(self, ds):
        """The checkpoint's logits on tokenized `ds` in PyTorch fp32 eager: what every variant is measured against."""
        return evaluate.predict(TorchRunner(self.ckpt, self.threads), ds, self.tokenizer)

    def held_out_reference(self):
        """The held-out target texts, tokenized, and the checkpoint's logits on them (computed once)."""
        if self._held_out_ref is None:
            held = self.encode(self.held_out, "held-out target texts")
            log.info("checkpoint predictions on %d held-out target texts (agreement)", len(held))
            self._held_out_ref = held, self.checkpoint_logits(held)
        return self._held_out_ref

    def _gate(self, q: dict, ref: dict, metric: str) -> None:
        e = self.cfg.export
        q["ratio"] = q[metric] / ref[metric] if ref[metric] else 0.0
        problems = quality.gate_problems(q, e.min_accuracy_ratio, e.min_agreement)
        q["accepted"] = not problems
        if problems:
            q["reason"] = f"{metric} {q[metric]:.4f} vs the checkpoint's {ref[metric]:.4f}: " + "; ".join(problems)

    def time_rows(self, rows: list[dict]) -> None:
        """Batch-1 latency of the checkpoint and every built variant, after all building, added to their rows."""
        built = {r["variant"]: self.out / r["variant"] for r in rows[1:] if "metric" in r}
        log.info("timing the checkpoint and %d built variants at batch 1", len(built))
        dirs = {REFERENCE: self.ckpt, **built}
        e = self.cfg.export
        latency = evaluate.time_interleaved(self.runner, dirs, self.test, self.tokenizer, e.latency_samples,
                                            e.latency_rounds)  # fmt: skip
        for r in rows:
            if r["variant"] in latency:
                r.update(evaluate.speedups(latency[r["variant"]], latency[REFERENCE]))

    def _report(self, rows: list[dict], metric: str) -> dict:
        accepted = [r for r in rows if r["status"] == "accepted"]
        best = min(accepted, key=lambda r: r["latency_p50_ms"])["variant"] if accepted else None
        if best:
            link = self.out / "best"
            tmp_link = self.out / ".best.tmp"
            tmp_link.unlink(missing_ok=True)
            tmp_link.symlink_to(best)  # relative: the export dir can be moved or copied as a whole
            os.replace(tmp_link, link)
        report = {
            "job": self.cfg.job,
            "task": self.task,
            "metric": metric,
            "checkpoint": str(self.ckpt),
            "checkpoint_sha256": self.parent["sha256"],
            "threads": self.threads,
            "min_accuracy_ratio": self.cfg.export.min_accuracy_ratio,
            "min_agreement": self.cfg.export.min_agreement,
            "latency_rounds": self.cfg.export.latency_rounds,
            "best": best,
            "rows": rows,
        }
        write_report(self.out, report)
        return report


def _row(q: dict, metric: str) -> dict:
    return {
        "metric": q[metric],
        "ratio": q.get("ratio", 1.0),
        "agreement": q["agreement"],
        "max_abs_dlogit": q["max_abs_dlogit"],
        "ratio_ci95": q.get("ratio_ci95"),
        "unlabeled_agreement": q.get("unlabeled_agreement"),
        "unlabeled_texts": q.get("unlabeled_texts"),
    }


def weights_bytes(root: Path) -> int:
    """Bytes of model weights (what a deployment ships), tokenizer and manifests excluded."""
    return sum(p.stat().st_size for p in Path(root).glob("*") if p.suffix in (".onnx", ".safetensors", ".data"))
