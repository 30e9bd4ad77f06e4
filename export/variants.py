"""The export variants: a registry of builders with one signature, and the prefixes that change the model first:

    [student-<layers>-][pruned-<pct>-]<base>    e.g. student-3-onnx-int8-dynamic, student-3-pruned-20-onnx-fp32
    student-<layers> / pruned-<pct> / student-<layers>-pruned-<pct>    the PyTorch model itself

student-<layers> distils the checkpoint into a shallower student (export/student.py); pruned-<pct> removes pct% of
heads and FFN neurons (export/prune.py; of the checkpoint, also export.prune_layers whole layers).

    build(graphs, src, out)   graphs: this run's cache of ONNX graphs and calibration data (Graphs below);
                              src: the model directory to build from (the checkpoint, or a pruned model);
                              out: the variant's (temporary) directory, to fill with model files

`python -m export --list` prints every name. Adding a variant is one builder and one BASES entry.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from domainlift.config import ExportConfig, JobConfig
from domainlift.errors import ConfigError
from domainlift.runtime import ONNX_FILE
from domainlift.training import unselected_settings
from export import build


class Graphs:
    """The exported fp32 graph and the fused one of each source model, built once and shared by every variant built
    from that model; and the calibration batches (target-domain unlabeled text), tokenized once."""

    def __init__(self, work: Path, task: str, opset: int, calibration: Callable[[], list[dict]]):
        self.work, self.task, self.opset = work, task, opset
        self._calibration = calibration
        self._cache: dict = {}

    def exported(self, src: Path) -> Path:
        key = ("export", str(src))
        if key not in self._cache:
            self._cache[key] = build.export_onnx(src, self.work / f"{Path(src).name}-onnx", self.task, self.opset)
        return self._cache[key]

    def fused(self, src: Path) -> Path:
        key = ("fused", str(src))
        if key not in self._cache:
            fused = self.work / f"{Path(src).name}-fused.onnx"
            build.optimize(self.exported(src), fused)
            self._cache[key] = fused
        return self._cache[key]

    def calibration(self) -> list[dict]:
        if "calibration" not in self._cache:
            self._cache["calibration"] = self._calibration()
        return self._cache["calibration"]


def _onnx(make: Callable[[Graphs, Path, Path, ExportConfig], None]):
    """An ONNX variant: the tokenizer and model config beside model.onnx."""

    def builder(graphs: Graphs, src: Path, out: Path, e: ExportConfig) -> None:
        build.copy_tokenizer_and_config(src, out)
        make(graphs, src, out / ONNX_FILE, e)

    return builder


def _bitsandbytes(bits: int):
    def builder(graphs: Graphs, src: Path, out: Path, e: ExportConfig) -> None:
        build.bitsandbytes_weights(src, out, graphs.task, bits)  # writes its own quantization-aware config.json

    return builder


def _needs_bitsandbytes() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
        import torch
    except ImportError:
        return "needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU"
    return None if torch.cuda.is_available() else "bitsandbytes 8-bit/NF4 kernels need a CUDA GPU"


def _needs_onnx_cuda() -> str | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return "fp16 ONNX is for GPUs: ONNX Runtime here has no CUDA provider (install onnxruntime-gpu)"


@dataclass(frozen=True)
class Base:
    steps: tuple[str, ...]  # what the build does, in order; recorded in the variant's recipe
    build: Callable[[Graphs, Path, Path, ExportConfig], None]
    settings: Callable[[ExportConfig], dict] = lambda e: {}  # the export.* settings it reads, for its recipe
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot be built on this machine, or None


BASES = {
    "onnx-fp32": Base(("export_onnx", "optimize"), _onnx(lambda g, src, dst, e: shutil.copy2(g.fused(src), dst))),
    "onnx-fp16": Base(
        ("export_onnx", "fp16"),
        _onnx(lambda g, src, dst, e: build.to_fp16(g.exported(src), dst)),
        unavailable=_needs_onnx_cuda,
    ),
    "onnx-int8-dynamic": Base(
        ("export_onnx", "optimize", "quantize_dynamic"),
        _onnx(lambda g, src, dst, e: build.quantize_dynamic(g.fused(src), dst)),
    ),
    # QDQ on the unfused graph; ONNX Runtime fuses the Q/DQ pairs at load.
    "onnx-int8-static": Base(
        ("export_onnx", "quantize_static"),
        _onnx(
            lambda g, src, dst, e: build.quantize_static(g.exported(src), dst, g.calibration(), e.calibration_method)
        ),
        settings=lambda e: {
            "calibration": {
                "method": e.calibration_method,
                "samples": e.calibration_samples,
                "data": "target unlabeled",
            }
        },
    ),
    "onnx-int4": Base(
        ("export_onnx", "optimize", "quantize_int4"),
        _onnx(lambda g, src, dst, e: build.quantize_int4(g.fused(src), dst, e.int4_block_size)),
        settings=lambda e: {"int4_block_size": e.int4_block_size},
    ),
    "torch-int8": Base(("bitsandbytes",), _bitsandbytes(8), unavailable=_needs_bitsandbytes),
    "torch-nf4": Base(("bitsandbytes",), _bitsandbytes(4), unavailable=_needs_bitsandbytes),
}
_NAME = re.compile(r"^(?:student-(?P<layers>\d+)(?:-(?=.)|$))?(?:pruned-(?P<pct>\d+)(?:-(?=.)|$))?(?P<base>.+)?$")


@dataclass
class Variant:
    name: str
    base: str | None  # a BASES key; None: the student's or pruned PyTorch model itself
    prune_pct: int | None = None
    student_layers: int | None = None
    recipe: dict = field(default_factory=dict)  # recorded in the manifest: same recipe + same parent = up to date

    def unavailable(self) -> str | None:
        return BASES[self.base].unavailable() if self.base else None


def valid_names() -> str:
    return ", ".join(
        [*BASES, "[student-<layers>-][pruned-<pct>-]<base> (e.g. student-3-onnx-int8-dynamic)", "student-<layers>",
         "pruned-<pct>"]
    )  # fmt: skip


def parse(name: str, cfg: JobConfig) -> Variant:
    m = _NAME.match(name)
    layers, pct = (int(m[k]) if m[k] else None for k in ("layers", "pct"))
    base = m["base"]
    if layers is not None and layers < 1:
        raise ConfigError(f"variant {name}: a student needs at least 1 layer")
    if pct is not None and not 0 < pct < 100:
        raise ConfigError(f"variant {name}: the prune ratio must be in (0, 100) percent, got {pct}")
    if (base is not None and base not in BASES) or not (layers or pct or base):
        raise ConfigError(f"unknown variant {name!r}; valid variants: {valid_names()}")
    e = cfg.export
    recipe: dict = {
        "variant": name,
        "opset": e.opset,
        "drift_profile": {"samples": e.drift_samples, "data": "target unlabeled"},
        "steps": ["student"] * bool(layers) + ["prune"] * bool(pct) + (list(BASES[base].steps) if base else []),
        "agreement": {"samples": e.agreement_samples, "data": "target unlabeled, held out"},
    }
    if layers:
        recipe["student"] = {
            "layers": layers,
            "epochs": e.student_epochs,
            "learning_rate": e.student_learning_rate or cfg.train.learning_rate,
            "hidden_weight": e.student_hidden_weight,
            "temperature": e.student_temperature,
            "hard_weight": e.student_hard_weight,
            "word_dropout": e.student_word_dropout,
            "data": "source train texts + target unlabeled (held-out texts excluded)",
            "train": unselected_settings(cfg.train),
        }
        if e.student_unlabeled:  # only when set, so students built without it stay up to date
            recipe["student"]["more_texts"] = [str(i) for i in e.student_unlabeled]
    if pct:
        recipe["prune"] = {
            "ratio": pct / 100,
            "layers_removed": 0 if layers else e.prune_layers,
            "recovery_epochs": e.prune_recovery_epochs,
            "distill": e.prune_distill,
            "hidden_weight": e.prune_hidden_weight,
            "importance": "gradient, source dev set",
            "train": unselected_settings(cfg.train) | {"learning_rate": cfg.train.learning_rate},
        }
    if base:
        recipe.update(BASES[base].settings(e))
    return Variant(name=name, base=base, prune_pct=pct, student_layers=layers, recipe=recipe)
