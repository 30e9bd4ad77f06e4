"""Latency of the original checkpoint and of every export variant, on every device this machine has, in one run.

python -m benchmarks.latency --config configs/sentiment-kitchen.yaml            # = make bench
python -m benchmarks.latency --random-weights --arch bert-base                  # no checkpoint needed (GPU boxes)

Subjects: the original checkpoint in PyTorch fp32 eager on the CPU, and on the GPU when there is one (fp32 eager,
fp16 eager, fp16 compiled with CUDA graphs); every variant under artifacts/<job>/export/ on its own runtime (ONNX
Runtime on the CPU, and with the CUDA provider where it exists; PyTorch for torch-* and pruned-* variants,
bitsandbytes ones on the GPU only). With --random-weights on a GPU, torch-int8 and torch-nf4 are built from the
random model when bitsandbytes is installed.
Cells: each batch size on real target-domain test texts at their natural lengths (consecutive texts, padded to
the longest of the batch), and each batch size at each fixed length in tokens. Each subject runs in a fresh
process, so its peak memory is its own (RSS on the CPU; torch's allocated memory on the GPU). Latency does not
depend on weight values, which is why --random-weights is a fair stand-in for an architecture.

Writes artifacts/<job>/reports/latency.json, latency.md (p50 with speedups against the original on the same
device and on the GPU) and two plots: latency vs batch size, and accuracy vs latency (the Pareto front).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.loadtest import target_texts
from domainlift import cli, manifest
from domainlift.config import default_model_path, load_config
from domainlift.errors import ConfigError
from domainlift.runtime import OnnxRunner, TorchRunner, pad_batch, runtime_of
from export.build import bitsandbytes_weights
from export.recipe import weights_bytes

ARCHS = {  # --random-weights: BERT-family shapes (hidden, layers, heads, FFN)
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
NATURAL = "natural"
NATURAL_TEXTS = 128


@dataclass
class Subject:
    name: str  # "original" or the variant's directory name
    device: str  # "cpu" | "cuda"
    path: str
    half: bool = False  # the original in fp16 on the GPU
    compiled: bool = False  # torch.compile with CUDA graphs (GPU)
    accuracy: float | None = None  # the target-test metric from its manifest (None with random weights)
    accepted: bool | None = None  # the export gate's verdict on a variant (None: the original, or no gate run)
    agreement: float | None = None  # a variant's agreement with the checkpoint on held-out target text
    size_mb: float | None = None  # its weights on disk, what a deployment ships

    @classmethod
    def of(cls, name: str, device: str, path: Path, **kw) -> Subject:
        return cls(name, device, str(path), size_mb=weights_bytes(path) / 2**20, **kw)

    @property
    def label(self) -> str:
        return f"{self.name}{' fp16' if self.half else ''}{' compiled' if self.compiled else ''} [{self.device}]"


def gpu_originals(checkpoint: str, accuracy: float | None) -> list[Subject]:
    """The original on the GPU: fp32 eager (the reference), fp16 eager, and fp16 compiled with CUDA graphs."""
    return [
        Subject("original", "cuda", checkpoint, accuracy=accuracy),
        Subject("original", "cuda", checkpoint, half=True, accuracy=accuracy),
        Subject("original", "cuda", checkpoint, half=True, compiled=True, accuracy=accuracy),
    ]


def cuda_devices() -> tuple[bool, bool]:
    """(torch sees a CUDA GPU, ONNX Runtime has the CUDA provider)."""
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available(), "CUDAExecutionProvider" in ort.get_available_providers()


def subjects_for(job_dir: Path, torch_cuda: bool, ort_cuda: bool) -> tuple[list[Subject], list[str]]:
    """What to time here, and a line for each thing that cannot be timed here and why."""
    checkpoint = job_dir / "checkpoint"
    quality = manifest.read(checkpoint)["quality"]
    metric = quality["main_metric"]
    out = [Subject.of("original", "cpu", checkpoint, accuracy=quality["target_test"])]
    skipped = []
    if torch_cuda:
        out += gpu_originals(str(checkpoint), out[0].accuracy)
    else:
        skipped.append("original [cuda]: no CUDA GPU here")
    export = job_dir / "export"
    manifest.clean_leftovers(export)  # what a killed export left behind is not a variant
    for d in sorted(p for p in export.glob("*") if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        m = manifest.read(d)
        q = m["quality"]
        acc, gate = q.get(metric), {"accepted": q.get("accepted"), "agreement": q.get("unlabeled_agreement")}
        gpu_only = m["recipe"]["variant"].startswith(("torch-int8", "torch-nf4")) or "fp16" in m["variant"]
        if not gpu_only:
            out.append(Subject.of(d.name, "cpu", d, accuracy=acc, **gate))
        cuda_here = ort_cuda if m["runtime"] == "onnxruntime" else torch_cuda
        if cuda_here:
            out.append(Subject.of(d.name, "cuda", d, accuracy=acc, **gate))
        elif gpu_only or m["runtime"] == "onnxruntime":
            why = "no CUDA provider in this onnxruntime" if m["runtime"] == "onnxruntime" else "no CUDA GPU here"
            skipped.append(f"{d.name} [cuda]: {why}")
    return out, skipped


def cells_for(texts: list[str], tokenizer, batch_sizes: list[int], lengths: list[int], max_length: int) -> dict:
    """{cell name: list of batches (dicts of int64 arrays)}. Natural cells cycle through the same first
    NATURAL_TEXTS test texts at every batch size (128 one at a time, 4 batches of 32, ...), so they compare."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    cells = {}
    for b in batch_sizes:
        batches = []
        for start in range(0, max(len(ids) - b + 1, 1), b):
            rows = ids[start : start + b]
            if len(rows) < b:  # fewer test texts than the batch size: repeat them
                rows = (rows * (b // max(len(rows), 1) + 1))[:b]
            batches.append(pad_batch([{"input_ids": r} for r in rows], tokenizer.pad_token_id))
            if len(batches) * b >= NATURAL_TEXTS:
                break
        cells[f"{NATURAL} b{b}"] = batches
        rng = np.random.default_rng(0)
        for n in lengths:
            input_ids = rng.integers(1000, tokenizer.vocab_size, size=(b, n), dtype=np.int64)
            input_ids[:, 0], input_ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
            ones = np.ones((b, n), dtype=np.int64)
            cells[f"len{n} b{b}"] = [{"input_ids": input_ids, "attention_mask": ones, "token_type_ids": 0 * ones}]
    return cells


def measure(subject: Subject, cells: dict, bench: dict) -> dict:
    """In a fresh process: load the subject, time every cell, report its own peak memory."""
    import torch

    threads = bench["threads"]
    if runtime_of(Path(subject.path)) == "onnxruntime":
        runner = OnnxRunner(Path(subject.path), threads, device=subject.device)
    else:
        runner = TorchRunner(
            Path(subject.path), threads, device=subject.device, half=subject.half, compiled=subject.compiled
        )
    results = {}
    for name, batches in cells.items():
        # On the GPU the first call of each input shape pays for CUDA-graph recording and kernel autotuning,
        # so the warm-up there covers every batch of the cell.
        for i in range(bench["warmup"] * (len(batches) if subject.device == "cuda" else 1)):
            runner(batches[i % len(batches)])
        times = []
        start = time.perf_counter()
        while len(times) < bench["max_repeats"] and (
            len(times) < bench["min_repeats"] or time.perf_counter() - start < bench["seconds_per_cell"]
        ):
            batch = batches[len(times) % len(batches)]
            t0 = time.perf_counter()
            runner(batch)  # returns numpy logits: the copy back to the host synchronises CUDA
            times.append((time.perf_counter() - t0) * 1000)
        size = len(batches[0]["input_ids"])
        results[name] = {
            "batch_size": size,
            "mean_tokens": float(np.mean([b["input_ids"].shape[1] for b in batches])),
            "repeats": len(times),
            "p50_ms": statistics.median(times),
            "p95_ms": float(np.percentile(times, 95)),
            "p99_ms": float(np.percentile(times, 99)),
            "texts_per_s": size * 1000 / statistics.fmean(times),
        }
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = (
        torch.cuda.max_memory_allocated() / 2**20 if subject.device == "cuda" and torch.cuda.is_available() else None
    )
    return {"cells": results, "peak_rss_mb": peak_rss_mb, "peak_gpu_allocated_mb": gpu_mb}


def random_checkpoint(arch: str, task: str, out: Path) -> Path:
    """A randomly initialised model of the architecture with MiniLM's tokenizer, saved like a checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

    tok = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tok.vocab_size, num_labels=2, **ARCHS[arch])
    cls = BertForSequenceClassification if task == "text-classification" else BertForTokenClassification
    cls(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_bitsandbytes_variants(checkpoint: Path, task: str) -> tuple[list[Subject], list[str]]:
    """torch-int8 and torch-nf4 built from the random checkpoint (GPU only), next to it in its scratch dir."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return [], ["torch-int8, torch-nf4 [cuda]: bitsandbytes is not installed"]

    out = []
    for name, bits in (("torch-int8", 8), ("torch-nf4", 4)):
        bitsandbytes_weights(checkpoint, checkpoint.parent / name, task, bits)
        out.append(Subject(name, "cuda", str(checkpoint.parent / name)))
    return out, []


def speedup_table(report: dict, natural: bool) -> str:
    """p50 per cell; in brackets the speedup over the original on the same device (and on the GPU, when timed).
    One table for natural lengths, one for fixed lengths: a single one is too wide to read."""
    rows = report["results"]
    cells = [c for c in next(iter(rows))["cells"] if c.startswith(NATURAL) == natural]
    ref = {r["device"]: r for r in rows if r["name"] == "original" and not r["half"] and not r["compiled"]}
    gpu = ref.get("cuda")
    head = "| subject | accuracy | size MB | peak mem MB | " + " | ".join(cells) + " |"
    lines = [head, "|" + "---|" * (len(cells) + 4)]
    for r in rows:
        same = ref[r["device"]]
        mem = r["peak_gpu_allocated_mb"] if r["device"] == "cuda" else r["peak_rss_mb"]
        parts = []
        for c in cells:
            p50 = r["cells"][c]["p50_ms"]
            text = f"{p50:.2f} ({same['cells'][c]['p50_ms'] / p50:.2f}x"
            text += f", {gpu['cells'][c]['p50_ms'] / p50:.2f}x GPU)" if gpu else ")"
            parts.append(text)
        acc = "—" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        mem_text = "—" if mem is None else f"{mem:.0f}"
        size = "—" if r.get("size_mb") is None else f"{r['size_mb']:.1f}"
        rejected = " (rejected)" if r["accepted"] is False else ""
        lines.append(f"| {r['label']}{rejected} | {acc} | {size} | {mem_text} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def plot(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        natural = [(c["batch_size"], c["p50_ms"]) for n, c in r["cells"].items() if n.startswith(NATURAL)]
        ax.plot(*zip(*natural), marker="o", label=r["label"])
    ax.set(xscale="log", yscale="log", xlabel="batch size (natural lengths)", ylabel="p50 latency per batch, ms")
    ax.set_title(f"{report['job']}: latency vs batch size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_batch.png", dpi=120)
    plt.close(fig)
    files = ["latency_vs_batch.png"]
    scored = [r for r in rows if r["accuracy"] is not None]
    if scored:
        files.append(plot_pareto(report, scored, out, plt))
    return files


def pareto_front(points: list[tuple]) -> list[tuple]:
    """The (latency, score, accepted, ...) points, fastest first, that nothing faster and not rejected scores as
    high as: what a user can ship at each latency. A variant the export gate rejected is never on the front, even
    when its test score is higher (a student can beat the checkpoint on 400 reviews and still change too many of
    its answers)."""
    front, best = [], -float("inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[2] is not False and p[1] > best:
            front.append(p)
            best = p[1]
    return front


def plot_pareto(report: dict, scored: list[dict], out: Path, plt) -> str:
    """Target-test metric vs batch-1 latency, and (when the export measured it) held-out agreement with the
    checkpoint vs batch-1 latency with the gate's line: the two halves of the export gate. Rejected variants are
    grey crosses; the front is drawn over the original and the accepted variants. Each point names its size."""
    cell = f"{NATURAL} b{report['bench']['batch_sizes'][0]}"
    panels = [("accuracy", "target-test metric")]
    if any(r["agreement"] is not None for r in scored):
        panels.append(("agreement", "agreement with the checkpoint, held-out target text"))
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels):
        reference = key == "agreement"  # the checkpoint agrees with itself: the original in fp32 sits at 1.0
        points = [
            (r["cells"][cell]["p50_ms"], 1.0 if reference and r["label"] == "original [cpu]" else r[key],
             r["accepted"], r["label"] + ("" if r.get("size_mb") is None else f", {r['size_mb']:.1f} MB"),
             "grey" if r["accepted"] is False else f"C{i}")  # one colour per subject in both panels
            for i, r in enumerate(scored)
        ]  # fmt: skip
        points = [p for p in points if p[1] is not None]
        row, last = 0, None
        for x, y, accepted, label, color in sorted(points, key=lambda p: (p[1], p[0])):
            row = row + 1 if y == last else 0  # labels of points at the same score step down instead of overlapping
            last = y
            rejected = accepted is False
            ax.scatter(x, y, marker="x" if rejected else "o", color=color)
            ax.annotate(label + (" (rejected)" if rejected else ""), (x, y), fontsize=7,
                        xytext=(4, 3 - 9 * row), textcoords="offset points")  # fmt: skip
        front = pareto_front(points) if key == "accuracy" else []
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--s", fillstyle="none", markersize=12,
                    label="Pareto front (accepted variants)")  # fmt: skip
        if key == "agreement":
            ax.axhline(report["min_agreement"], color="r", linestyle=":", label="export.min_agreement (the gate)")
        ax.set(xlabel=f"p50 latency, {cell}, ms", ylabel=ylabel)
        ax.margins(0.1)  # room for the labels of the points at the edges
        ax.legend(fontsize=8, loc="best")  # a fixed corner hid the original's point when a student out-scored it
    fig.suptitle(f"{report['job']}: accuracy vs latency")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)
    return "accuracy_vs_latency.png"


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m benchmarks.latency", __doc__, config_required=False)  # not with --random-weights
    parser.add_argument("--random-weights", action="store_true", help="time an architecture without a checkpoint")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="minilm")
    parser.add_argument(
        "--task", choices=["text-classification", "token-classification"], default="text-classification"
    )
    args = parser.parse_args(argv)

    from tqdm import tqdm
    from transformers import AutoTokenizer

    torch_cuda, ort_cuda = cuda_devices()
    if args.random_weights:
        defaults = [] if args.config else [f"job=random-{args.arch}"]
        cfg = load_config(args.config, defaults + args.overrides)
        scratch = Path(tempfile.mkdtemp(prefix="domainlift-random-"))
        checkpoint = random_checkpoint(args.arch, args.task, scratch / "checkpoint")
        subjects = [Subject.of("original", "cpu", checkpoint)]
        skipped = [] if torch_cuda else ["original [cuda]: no CUDA GPU here"]
        if torch_cuda:
            bnb, skipped = random_bitsandbytes_variants(checkpoint, args.task)
            subjects += gpu_originals(str(checkpoint), None) + bnb
    else:
        if not args.config:
            raise ConfigError("--config is required (or --random-weights --arch minilm|bert-base)")
        cfg = load_config(args.config, args.overrides)
        checkpoint = cfg.job_dir / "checkpoint"
        manifest.verify(checkpoint)
        subjects, skipped = subjects_for(cfg.job_dir, torch_cuda, ort_cuda)
    texts = target_texts(cfg)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    b = cfg.bench
    cells = cells_for(texts, tokenizer, list(b.batch_sizes), list(b.fixed_lengths), cfg.model.max_length)
    bench = asdict(b)
    results = []
    context = multiprocessing.get_context("spawn")  # a fresh process per subject: clean peak memory, no leaks
    for subject in tqdm(subjects, desc="subjects", unit="subject"):
        with context.Pool(1) as pool:
            measured = pool.apply(measure, (subject, cells, bench))
        results.append({**asdict(subject), "label": subject.label, **measured})
    if args.random_weights:
        shutil.rmtree(checkpoint.parent)  # the random model was only a stand-in: do not leave it in /tmp
    out = cfg.job_dir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "job": cfg.job,
        "random_weights": args.arch if args.random_weights else None,
        "bench": bench,
        "devices": {"torch_cuda": torch_cuda, "onnxruntime_cuda": ort_cuda},
        "skipped": skipped,
        "min_agreement": cfg.export.min_agreement,
        "results": results,
    }
    report["plots"] = plot(report, out)
    (out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n\n".join(
        f"### {what}\n\n{speedup_table(report, natural)}"
        for what, natural in (("Real test texts, natural lengths", True), ("Fixed lengths (tokens)", False))
        if natural or b.fixed_lengths  # bench.fixed_lengths=[]: no fixed-length cells, no empty table
    )
    notes = "".join(f"- skipped {s}\n" for s in skipped)
    (out / "latency.md").write_text(
        f"# Latency: {cfg.job}\n\np50 ms per batch (speedup over the original on the same device"
        f"{', and over the original on the GPU' if torch_cuda else ''}).\n\n{table}\n\n{notes}"
    )
    print(table)
    print(notes + f"reports: {out}/latency.md, latency.json, " + ", ".join(report["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
