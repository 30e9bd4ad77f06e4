"""The export recipe: checkpoint -> one verified directory per variant -> report + `best`.

    python -m export --config configs/sentiment-kitchen.yaml [--variants onnx-int8-dynamic,onnx-int4] [--force]

Reads artifacts/<job>/checkpoint/ (manifest verified), writes artifacts/<job>/export/<variant>/ (model files,
tokenizer, manifest.json with parent hash, recipe, files, measured quality), then export/report.{md,json}
and the symlink export/best -> the fastest variant that passes the accuracy gate.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from domainlift import manifest
from domainlift.config import ConfigError, JobConfig
from domainlift.runtime import ONNX_FILE, TorchRunner, load_runner
from export import build, evaluate, prune
from finetune import data as data_mod
from finetune import tasks

log = logging.getLogger("export")

# base variant -> ONNX build steps after the PyTorch -> ONNX export
BASES = {
    "onnx-fp32": ["optimize"],
    "onnx-fp16": ["fp16"],
    "onnx-int8-dynamic": ["optimize", "quantize_dynamic"],
    "onnx-int8-static": ["quantize_static"],  # QDQ on the unfused graph; ORT fuses Q/DQ pairs at load
    "onnx-int4": ["optimize", "quantize_int4"],
    "torch-int8": ["bitsandbytes"],
    "torch-nf4": ["bitsandbytes"],
}
_PRUNED = re.compile(r"^pruned-(\d+)(?:-(.+))?$")


@dataclass
class Variant:
    name: str
    base: str | None  # None: the pruned PyTorch model itself
    prune_pct: int | None = None
    recipe: dict = field(default_factory=dict)


def valid_names() -> str:
    return ", ".join([*BASES, "pruned-<pct>", "pruned-<pct>-<base> (e.g. pruned-30-onnx-int8-dynamic)"])


def parse_variant(name: str, cfg: JobConfig) -> Variant:
    m = _PRUNED.match(name)
    pct, base = (int(m.group(1)), m.group(2)) if m else (None, name)
    if pct is not None and not 0 < pct < 100:
        raise ConfigError(f"variant {name}: the prune ratio must be in (0, 100) percent, got {pct}")
    if base is not None and base not in BASES:
        raise ConfigError(f"unknown variant {name!r}; valid variants: {valid_names()}")
    e = cfg.export
    recipe: dict = {
        "variant": name,
        "opset": e.opset,
        "steps": (["prune"] if pct else [])
        + (["export_onnx", *BASES[base]] if base and base.startswith("onnx") else BASES.get(base, [])),
    }
    if pct:
        recipe["prune"] = {
            "ratio": pct / 100,
            "layers_removed": e.prune_layers,
            "recovery_epochs": e.prune_recovery_epochs,
            "distill": e.prune_distill,
            "hidden_weight": e.prune_hidden_weight,
            "importance": "gradient, source dev set",
        }
    if base == "onnx-int8-static":
        recipe["calibration"] = {
            "method": e.calibration_method,
            "samples": e.calibration_samples,
            "data": "target unlabeled",
        }
    if base == "onnx-int4":
        recipe["int4_block_size"] = e.int4_block_size
    return Variant(name=name, base=base, prune_pct=pct, recipe=recipe)


def why_not_here(v: Variant) -> str | None:
    """Why a variant cannot be built on this machine (skipped, not failed), or None."""
    if v.base in ("torch-int8", "torch-nf4"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU"
        if not torch.cuda.is_available():
            return "bitsandbytes 8-bit/NF4 kernels need a CUDA GPU"
    if v.base == "onnx-fp16":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "fp16 ONNX is for GPUs: ONNX Runtime here has no CUDA provider (install onnxruntime-gpu)"
    return None


class Exporter:
    def __init__(self, cfg: JobConfig, force: bool = False):
        self.cfg, self.force = cfg, force
        self.ckpt = cfg.job_dir / "checkpoint"
        self.out = cfg.job_dir / "export"
        if not self.ckpt.is_dir():
            raise manifest.ManifestError(f"no checkpoint at {self.ckpt}; run `make finetune JOB={cfg.job}` first")
        self.ckpt_manifest = manifest.verify(self.ckpt)
        self.parent = manifest.parent_info(self.ckpt)
        self.task = cfg.data.task
        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt)
        model_cfg = json.loads((self.ckpt / "config.json").read_text())
        self.labels = [model_cfg["id2label"][str(i)] for i in range(len(model_cfg["id2label"]))]
        self.num_layers = model_cfg.get("num_hidden_layers", 0)
        self.splits = data_mod.build_splits(cfg.data)
        self.test = self.encode(self.splits.test, "test")
        self.gold = evaluate.label_matrix(self.test)
        self.threads = cfg.export.latency_threads or os.cpu_count()
        self.work = Path(tempfile.mkdtemp(prefix="domainlift-export-"))
        self._cache: dict[str, Path] = {}

    def encode(self, ds, name: str):
        return tasks.tokenize(ds, self.tokenizer, self.labels, self.cfg.model.max_length, self.task, name)

    # ---- building -------------------------------------------------------------------------------------

    def pruned_model(self, pct: int) -> Path:
        key = f"pruned-{pct}"
        if key in self._cache:
            return self._cache[key]
        cls = tasks.model_class(self.task)
        model = cls.from_pretrained(self.ckpt, attn_implementation="eager")  # head_mask needs eager attention
        teacher = cls.from_pretrained(self.ckpt)
        dev = self.encode(self.splits.dev, "dev")
        dev_batches = []
        for idx, b in evaluate.batches(dev, self.tokenizer):
            t = {k: torch.as_tensor(v) for k, v in b.items()}
            gold = evaluate.label_matrix(dev.select(idx.tolist()))
            t["labels"] = torch.as_tensor(gold if gold.ndim == 1 else gold[:, : t["input_ids"].shape[1]])
            dev_batches.append(t)
        e = self.cfg.export
        before = sum(p.numel() for p in model.parameters())
        kept = list(range(model.config.num_hidden_layers))
        if e.prune_layers:
            kept = prune.drop_layers(model, prune.layer_importance(model, dev_batches), e.prune_layers)
            log.info("pruned %d whole layers: kept layers %s", e.prune_layers, kept)
        heads, ffn = prune.importance(model, dev_batches)
        info = {"layers_kept": kept, **prune.prune(model, heads, ffn, pct / 100)}
        after = sum(p.numel() for p in model.parameters())
        log.info("pruned %d%%: %d -> %d parameters, heads removed %s", pct, before, after, info["heads_removed"])
        if e.prune_recovery_epochs > 0:
            train = self.encode(self.splits.train, "train")
            model = prune.recover(
                model,
                teacher,
                train,
                tasks.collator(self.task, self.tokenizer),
                self.tokenizer,
                self.work / f"recover-{pct}",
                e.prune_recovery_epochs,
                e.prune_distill,
                hidden_weight=e.prune_hidden_weight,
                kept_layers=kept,
                lr=self.cfg.train.learning_rate,
                batch_size=self.cfg.train.batch_size,
                seed=self.cfg.train.seed,
            )
        out = self.work / key
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        (out / "pruning.json").write_text(json.dumps({**info, "parameters": [before, after]}, indent=2))
        self._cache[key] = out
        return out

    def onnx_graph(self, src: Path, key: str, step: str) -> Path:
        """The exported (and fused) fp32 graphs, built once per source model and reused by every variant."""
        exported = self._cache.get(f"{key}/export")
        if exported is None:
            exported = build.export_onnx(src, self.work / f"{key}-onnx", self.task, self.cfg.export.opset)
            self._cache[f"{key}/export"] = exported
        if step == "export":
            return exported
        fused = self._cache.get(f"{key}/optimize")
        if fused is None:
            fused = self.work / f"{key}-fused.onnx"
            build.optimize(exported, fused)
            self._cache[f"{key}/optimize"] = fused
        return fused

    def build(self, v: Variant, tmp: Path) -> None:
        if v.prune_pct:
            src, key = self.pruned_model(v.prune_pct), f"pruned-{v.prune_pct}"
        else:
            src, key = self.ckpt, "checkpoint"
        if v.base is None:  # the pruned PyTorch model itself
            for f in src.iterdir():
                shutil.copy2(f, tmp / f.name)
            return
        if (src / "pruning.json").is_file():
            shutil.copy2(src / "pruning.json", tmp / "pruning.json")
        target = tmp / ONNX_FILE
        steps = BASES[v.base]
        if steps != ["bitsandbytes"]:  # bitsandbytes writes its own (quantization-aware) config.json
            build.copy_tokenizer_and_config(src, tmp)
        if steps == ["optimize"]:
            shutil.copy2(self.onnx_graph(src, key, "optimize"), target)
        elif steps == ["fp16"]:
            build.to_fp16(self.onnx_graph(src, key, "export"), target)
        elif steps[-1] == "quantize_dynamic":
            build.quantize_dynamic(self.onnx_graph(src, key, "optimize"), target)
        elif steps[-1] == "quantize_static":
            calib = self.encode(
                self.splits.unlabeled.select(
                    range(min(self.cfg.export.calibration_samples, len(self.splits.unlabeled)))
                ),
                "calibration",
            )
            calib_batches = [b for _, b in evaluate.batches(calib, self.tokenizer, size=1)]
            build.quantize_static(
                self.onnx_graph(src, key, "export"), target, calib_batches, self.cfg.export.calibration_method
            )
        elif steps == ["bitsandbytes"]:
            build.bitsandbytes_weights(src, tmp, self.task, bits=8 if v.base == "torch-int8" else 4)
        elif steps[-1] == "quantize_int4":
            build.quantize_int4(self.onnx_graph(src, key, "optimize"), target, self.cfg.export.int4_block_size)
        else:
            raise NotImplementedError(f"{v.name}: no build step for {steps}")

    # ---- verifying ------------------------------------------------------------------------------------

    def runner(self, root: Path):
        return load_runner(root, self.threads, verify=False)  # verified once, when built or found up to date

    def measure(self, root: Path, ref_logits) -> dict:
        logits = evaluate.predict(self.runner(root), self.test, self.tokenizer)
        return evaluate.compare(self.task, self.labels, logits, ref_logits, self.gold)

    def time_all(self, dirs: dict[str, Path], rounds: int = 3) -> dict[str, dict]:
        """Batch-1 latency of every model after all building is done, in `rounds` rounds with the order rotated
        each round; each model's p50/total is the median over rounds. A machine whose speed drifts (shared
        cores, other load) then slows every model alike instead of whichever happened to run at the time."""
        n = self.cfg.export.latency_samples
        names = list(dirs)
        per_round: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                per_round[name].append(evaluate.latency_ms(self.runner(dirs[name]), self.test, self.tokenizer, n))
        return {
            name: {key: statistics.median(m[key] for m in runs) for key in ("p50", "mean", "total")}
            for name, runs in per_round.items()
        }

    def up_to_date(self, v: Variant) -> dict | None:
        d = self.out / v.name
        if self.force or not (d / manifest.MANIFEST).is_file():
            return None
        try:
            m = manifest.verify(d)
        except manifest.ManifestError as e:
            log.warning("%s: rebuilding, %s", v.name, e)
            return None
        same = m.get("parent", {}).get("sha256") == self.parent["sha256"] and m.get("recipe") == v.recipe
        return m if same else None

    def run(self, names: list[str]) -> dict:
        variants = [parse_variant(n, self.cfg) for n in names]  # every name checked before any work
        prune_layers = self.cfg.export.prune_layers
        if prune_layers and any(v.prune_pct for v in variants) and prune_layers >= self.num_layers:
            raise ConfigError(
                f"export.prune_layers is {prune_layers} but the model has {self.num_layers} layers; "
                f"remove at most {self.num_layers - 1}"
            )
        if any(v.base and v.base.startswith("onnx") for v in variants):
            build.check_onnx_support(self.ckpt, self.task)
        metric = tasks.MAIN_METRIC[self.task]
        log.info("reference: checkpoint in PyTorch fp32 eager, %d test examples", len(self.test))
        ref_quality, ref_logits = self._reference()
        rows = [
            {
                "variant": "checkpoint (PyTorch fp32)",
                "status": "reference",
                "runtime": "torch",
                "size_bytes": _size(self.ckpt),
                **_row(ref_quality, metric),
            }
        ]
        failed = []
        for v in variants:
            reason = why_not_here(v)
            if reason:
                log.warning("%s: skipped, %s", v.name, reason)
                rows.append({"variant": v.name, "status": "skipped", "reason": reason})
                continue
            existing = self.up_to_date(v)
            try:
                if existing is None:
                    log.info("%s: building", v.name)
                    with manifest.atomic_dir(self.out / v.name, overwrite=True) as tmp:
                        self.build(v, tmp)
                        quality = self.measure(tmp, ref_logits)
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
                            runtime="onnxruntime" if (tmp / ONNX_FILE).is_file() else "torch",
                            labels=self.labels,
                        )
                    m = manifest.read(self.out / v.name)
                else:
                    log.info("%s: up to date (same parent and recipe), not rebuilt", v.name)
                    m = existing
            except Exception as e:  # one broken variant must not sink the others; it is reported
                log.error("%s: failed: %s", v.name, e)
                failed.append(v.name)
                rows.append({"variant": v.name, "status": "failed", "reason": f"{type(e).__name__}: {e}"})
                continue
            q = m["quality"]
            rows.append(
                {
                    "variant": v.name,
                    "status": "accepted" if q["accepted"] else "rejected",
                    "runtime": m["runtime"],
                    "size_bytes": _size(self.out / v.name),
                    "reason": q.get("reason", ""),
                    **_row(q, metric),
                }
            )
        log.info("timing the checkpoint and %d built variants at batch 1", sum("metric" in r for r in rows) - 1)
        built = {r["variant"]: self.out / r["variant"] for r in rows[1:] if "metric" in r}
        latency = self.time_all({rows[0]["variant"]: self.ckpt, **built})
        ref_lat = latency[rows[0]["variant"]]
        for r in rows:
            if r["variant"] in latency:
                lat = latency[r["variant"]]
                r.update(
                    latency_p50_ms=lat["p50"],
                    latency_mean_ms=lat["mean"],
                    speedup_p50=ref_lat["p50"] / lat["p50"],
                    speedup_total=ref_lat["total"] / lat["total"],
                )
        report = self._report(rows, metric)
        shutil.rmtree(self.work, ignore_errors=True)
        if failed:
            raise RuntimeError(f"variants failed to build: {', '.join(failed)} (see {self.out / 'report.md'})")
        return report

    def _reference(self):
        logits = evaluate.predict(TorchRunner(self.ckpt, self.threads), self.test, self.tokenizer)
        return evaluate.compare(self.task, self.labels, logits, logits, self.gold), logits

    def _gate(self, quality: dict, ref: dict, metric: str) -> None:
        ratio = quality[metric] / ref[metric] if ref[metric] else 0.0
        quality["ratio"] = ratio
        quality["accepted"] = ratio >= self.cfg.export.min_accuracy_ratio
        if not quality["accepted"]:
            quality["reason"] = (
                f"{metric} {quality[metric]:.4f} is {ratio:.4f} of the checkpoint's {ref[metric]:.4f}, "
                f"below export.min_accuracy_ratio={self.cfg.export.min_accuracy_ratio}"
            )

    def _report(self, rows: list[dict], metric: str) -> dict:
        from export.report import write_report

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
    }


def _size(root: Path) -> int:
    """Bytes of model weights (what a deployment ships), tokenizer and manifests excluded."""
    return sum(p.stat().st_size for p in Path(root).glob("*") if p.suffix in (".onnx", ".safetensors", ".data"))
