"""Domain-adaptation methods x Amazon review domain pairs: target-test accuracy of each, against source-only.

python -m benchmarks.adapt_matrix                                    # = make adapt-matrix
python -m benchmarks.adapt_matrix --pairs books:kitchen,dvd:electronics --methods full,dann train.epochs=1

Each cell fine-tunes the job in --config (default configs/sentiment-kitchen.yaml) with data.source = the pair's
source domain, data.target = its target domain and method.name = the column's method, then reads the target-test
accuracy from the checkpoint's metrics. `full` is source-only fine-tuning, the baseline every gain is against.
Finished cells are reused when their recorded config equals the one asked for (--force reruns them), so an
interrupted matrix resumes. Writes <out>/results.json, results.md and heatmap.png; runs go to <out>/runs/.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from domainlift.cli import job_parser, stay_offline

stay_offline()

DOMAINS = ("books", "dvd", "electronics", "kitchen")
ALL_PAIRS = [f"{s}:{t}" for s in DOMAINS for t in DOMAINS if s != t]
CPU_PAIRS = ["books:kitchen", "dvd:electronics", "electronics:books", "kitchen:dvd"]  # each domain once each way
METHODS = ["full", "dapt", "dann", "udalm", "fgm"]
BASELINE = "full"


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        source, _, target = item.strip().partition(":")
        if source not in DOMAINS or target not in DOMAINS or source == target:
            raise ValueError(f"pair {item!r}: use source:target with two different domains of {', '.join(DOMAINS)}")
        pairs.append((source, target))
    return pairs


def cell_config(base: str, out: Path, source: str, target: str, method: str, overrides: list[str]):
    from domainlift.config import load_config

    return load_config(
        base,
        [
            f"job={source}-to-{target}-{method.replace('+', '-')}",
            f"output_dir={out / 'runs'}",
            f"data.source=data/amazon-reviews/{source}.jsonl",
            f"data.target=data/amazon-reviews/{target}.jsonl",
            f"method.name={method}",
            *overrides,
        ],
    )


def run_cell(cfg, force: bool) -> dict:
    """Fine-tune one cell (or reuse its finished checkpoint) and return its target-test metrics."""
    from domainlift import manifest
    from finetune.train import run

    ckpt = cfg.job_dir / "checkpoint"
    if not force and (ckpt / "metrics.json").is_file() and manifest.read(ckpt)["config"] == cfg.to_dict():
        return {**json.loads((ckpt / "metrics.json").read_text()), "reused": True}
    run(cfg, overwrite=True)
    shutil.rmtree(cfg.job_dir / "run", ignore_errors=True)  # resumable Trainer states: GBs, not needed now
    return {**json.loads((ckpt / "metrics.json").read_text()), "reused": False}


def summarise(cells: dict, pairs: list[str], methods: list[str]) -> dict:
    means = {m: sum(cells[p][m]["accuracy"] for p in pairs) / len(pairs) for m in methods}
    gains = {m: means[m] - means[BASELINE] for m in methods} if BASELINE in methods else {}
    return {"mean": means, "gain_over_source_only": gains}


def markdown(report: dict) -> str:
    pairs, methods, cells = report["pairs"], report["methods"], report["cells"]
    lines = [
        "| pair | " + " | ".join("source-only" if m == BASELINE else m for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for p in pairs:
        lines.append(
            f"| {p.replace(':', ' → ')} | " + " | ".join(f"{cells[p][m]['accuracy']:.4f}" for m in methods) + " |"
        )
    lines.append("| **mean** | " + " | ".join(f"**{report['mean'][m]:.4f}**" for m in methods) + " |")
    if report["gain_over_source_only"]:
        gains = report["gain_over_source_only"]
        lines.append("| gain (points) | " + " | ".join(f"{100 * gains[m]:+.2f}" for m in methods) + " |")
    lines.append(
        "| train time, s (mean) | "
        + " | ".join(f"{sum(cells[p][m]['train_runtime_s'] for p in pairs) / len(pairs):.0f}" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def heatmap(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs, methods = report["pairs"], report["methods"]
    acc = np.array(
        [[report["cells"][p][m]["accuracy"] for m in methods] for p in pairs] + [[report["mean"][m] for m in methods]]
    )
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 0.5 * len(pairs) + 2))
    im = ax.imshow(acc, cmap="viridis", aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(methods)), ["source-only" if m == BASELINE else m for m in methods])
    ax.set_yticks(range(len(pairs) + 1), [p.replace(":", " → ") for p in pairs] + ["mean"])
    ax.set_title("target-test accuracy")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = job_parser("python -m benchmarks.adapt_matrix", __doc__, config_required=False)
    parser.add_argument(
        "--pairs", help=f"comma-separated source:target (default: {','.join(CPU_PAIRS)}; all 12 on a GPU)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated method.name values")
    parser.add_argument("--out", default="artifacts/adapt-matrix")
    parser.add_argument("--force", action="store_true", help="rerun cells that already finished")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from domainlift.config import ConfigError
    from finetune.data import DataError

    base = args.config or "configs/sentiment-kitchen.yaml"
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        pairs = parse_pairs(args.pairs or ",".join(ALL_PAIRS if torch.cuda.is_available() else CPU_PAIRS))
        configs = {(f"{s}:{t}", m): cell_config(base, out, s, t, m, args.overrides) for s, t in pairs for m in methods}
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells: dict = {f"{s}:{t}": {} for s, t in pairs}
    t0 = time.perf_counter()
    for (pair, method), cfg in tqdm(configs.items(), desc="adapt-matrix", unit="run"):
        try:
            metrics = run_cell(cfg, args.force)
        except (ConfigError, DataError) as e:
            print(f"error: {pair} {method}: {e}", file=sys.stderr)
            return 2
        cells[pair][method] = {
            "accuracy": metrics["target_test"]["accuracy"],
            "macro_f1": metrics["target_test"]["macro_f1"],
            "train_runtime_s": metrics["train_runtime_s"],
            "reused": metrics["reused"],
            "checkpoint": str(cfg.job_dir / "checkpoint"),
        }
    report = {
        "pairs": list(cells),
        "methods": methods,
        "config": base,
        "overrides": args.overrides,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "wall_s": round(time.perf_counter() - t0, 1),
        "cells": cells,
    }
    report.update(summarise(cells, report["pairs"], methods))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    command = " ".join(["python -m benchmarks.adapt_matrix", *(sys.argv[1:] if argv is None else argv)])
    (out / "results.md").write_text(f"# Domain adaptation: target-test accuracy\n\n`{command}`\n\n{table}\n")
    heatmap(report, out / "heatmap.png")
    print(table)
    print(f"results: {out}/results.md, results.json, heatmap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
