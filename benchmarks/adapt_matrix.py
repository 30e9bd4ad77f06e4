"""Domain-adaptation methods x domain pairs: the target-test score of each, against the baseline.

python -m benchmarks.adapt_matrix                                    # = make adapt-matrix (Amazon reviews)
python -m benchmarks.adapt_matrix --pairs books:kitchen,dvd:electronics --methods full,dann train.epochs=1
python -m benchmarks.adapt_matrix --suite crossner                   # = make adapt-matrix SUITE=crossner
python -m benchmarks.adapt_matrix --seeds 42,43                      # every cell twice; cells show the mean

Two suites:
- amazon: rows = source:target review domains, columns = method.name values, cells = target-test accuracy.
  Each cell fine-tunes configs/sentiment-kitchen.yaml with the pair's domains; `full` (source-only) is the baseline.
  One more column, `few-shot-200`, is `full` with 200 labelled target reviews added to the training data: the
  methods use target text without labels, few-shot uses target labels, and it shows what a few labels buy.
- crossner: rows = CrossNER target domains, columns = how the target's 200 (ai: 100) labelled sentences are used,
  cells = entity micro-F1 on the target test set. Each cell fine-tunes configs/ner-conll2003-to-politics.yaml:
  `direct` fine-tunes on the target sentences alone (the baseline), `pretrain` trains on CoNLL-2003 first,
  `pretrain+dapt` runs masked-LM training on the target's unlabeled text before both. The CoNLL pre-training
  without DAPT is the same for every domain: it runs once and the others reuse it (finetune's pretrain-cache).
One test set of 400 reviews gives a single run a standard error of ~2 points, about the size of the gains,
so --seeds runs every cell once per training seed (train.seed: head initialisation, batch order; the data splits
stay the same): a cell is the mean over seeds, and the table counts the (pair, seed) runs that beat the baseline
run with the same seed. Finished cells are reused when their recorded fine-tuning config (data, model, method,
pretrain, train) equals the one asked for (--force reruns them), so an interrupted matrix resumes.
--jobs N runs the cells in N processes side by side: a GPU holds several of these small models at once (on a
2-core CPU one job is fastest). Cells that depend on each other run in one process, in order (units()); each
process logs to <out>/logs/.
Writes <out>/results.json, results.md and heatmap.png; runs go to <out>/runs/<pair>-<column>-seed<seed>/.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from statistics import fmean, stdev

from domainlift import cli, manifest
from domainlift.config import SELF_TRAIN, config_from_dict, load_config
from domainlift.errors import ConfigError, DomainliftError
from finetune.recipe import run

DOMAINS = ("books", "dvd", "electronics", "kitchen")
ALL_PAIRS = [f"{s}:{t}" for s in DOMAINS for t in DOMAINS if s != t]
CPU_PAIRS = ["books:kitchen", "dvd:electronics", "electronics:books", "kitchen:dvd"]  # each domain once each way
# Every method.name worth comparing: source-only, self-training, DAPT and DAPT + self-training, UDALM (which runs
# DAPT itself), DANN after DAPT, FGM. A +self-train column is taught by its base column's cell (the same method
# without +self-train, same pair and seed), which runs first when it has not.
METHODS = ["full", "self-train", "dapt", "dapt+self-train", "udalm", "dapt+dann", "fgm"]
# Columns that are not a method.name alone. Few-shot is a different setting from the others: it uses target
# *labels* (200 of the target's 1600 train reviews, stratified), so it answers "what do a few labels buy".
AMAZON_SETTINGS = {"few-shot-200": ["method.name=full", "data.target_labelled=200"]}

NER_DOMAINS = ("politics", "science", "ai")
# The target's unlabeled text is its ~200 training sentences and its dev sentences' text (the paper's DAPT corpora
# hold millions of sentences), so DAPT makes more passes over it than the Amazon default of 2.
# `direct` waits 50 epochs before the patience counts: trained on ai's 100 sentences alone, the model predicts no entity
# for its first epochs (dev F1 0) and the paper's patience of 8 ended it at epoch 9 (test F1 0.02). Politics and
# science direct ran to epoch 71 and 75, so the wait does not change them.
NER_SETTINGS = {
    "direct": ["pretrain.data=null", "method.name=full", "train.early_stopping_start_epoch=50"],
    "pretrain": ["pretrain.data=data/crossner/conll2003", "method.name=full"],
    "pretrain+dapt": ["pretrain.data=data/crossner/conll2003", "method.name=dapt", "method.dapt.epochs=10"],
}

SUITES = {
    "amazon": {
        "config": "configs/sentiment-kitchen.yaml",
        "out": "artifacts/adapt-matrix",
        "columns": [*METHODS, *AMAZON_SETTINGS],
        "baseline": "full",
        "metric": "accuracy",
    },
    "crossner": {
        "config": "configs/ner-conll2003-to-politics.yaml",
        "out": "artifacts/adapt-matrix-crossner",
        "columns": list(NER_SETTINGS),
        "baseline": "direct",
        "metric": "f1",
    },
}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        source, _, target = item.strip().partition(":")
        if source not in DOMAINS or target not in DOMAINS or source == target:
            raise ConfigError(f"pair {item!r}: use source:target with two different domains of {', '.join(DOMAINS)}")
        pairs.append((source, target))
    return pairs


def parse_ner_domains(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        target = item.strip().removeprefix("conll2003:")
        if target not in NER_DOMAINS:
            raise ConfigError(f"CrossNER domain {item!r}: use one of {', '.join(NER_DOMAINS)}")
        pairs.append(("conll2003", target))
    return pairs


def parse_seeds(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: use comma-separated integers, e.g. 42,43") from None


def cell_config(
    suite: str, base: str, out: Path, source: str, target: str, column: str, seed: int | None, overrides: list[str]
):
    if suite == "amazon":
        cell = [
            f"data.source=data/amazon-reviews/{source}.jsonl",
            f"data.target=data/amazon-reviews/{target}.jsonl",
            f"data.unlabeled=[data/amazon-reviews/unlabeled/{target}.jsonl]",  # the target's unlabeled pool
        ]
        cell += AMAZON_SETTINGS.get(column, [f"method.name={column}"])
    else:
        if column not in NER_SETTINGS:
            raise ConfigError(f"CrossNER column {column!r}: use one of {', '.join(NER_SETTINGS)}")
        cell = [
            f"data.source=data/crossner/{target}",
            f"data.target=data/crossner/{target}",
            f"data.unlabeled=[{{path: data/crossner/{target}/dev.txt, format: conll}}]",  # dev text, no tags: dapt
            *NER_SETTINGS[column],
        ]
    cfg = load_config(
        base, [f"output_dir={out / 'runs'}", *cell, *overrides, *([f"train.seed={seed}"] if seed is not None else [])]
    )
    cfg.job = cell_name(source, target, column, cfg.train.seed)
    teacher = teacher_column(column)
    if teacher and not cfg.method.self_train.teacher:
        cfg.method.self_train.teacher = str(
            cfg.job_dir.parent / cell_name(source, target, teacher, cfg.train.seed) / "checkpoint"
        )
    return cfg


def cell_name(source: str, target: str, column: str, seed: int) -> str:
    return f"{source}-to-{target}-{column.replace('+', '-')}-seed{seed}"


def teacher_column(column: str) -> str | None:
    """The column whose cell teaches a +self-train column: the same method without +self-train."""
    if not column.endswith(SELF_TRAIN):
        return None
    return column.removesuffix(SELF_TRAIN).rstrip("+") or "full"


Cell = tuple[str, str, int | None]  # (pair, column, seed as asked: None is the config's train.seed)


def shared_by(key: Cell, cfg) -> list[tuple]:
    """What a cell shares with other cells of a matrix: the cell that teaches it (a +self-train column's base
    column, same pair and seed) and the cached phases it starts from (DAPT per target and seed; pre-training per
    seed, and per DAPT target when it starts from DAPT)."""
    pair, column, _ = key
    target, seed = pair.split(":")[1], cfg.train.seed
    shared = [("cell", pair, teacher_column(column) or column, seed)]
    if cfg.method.uses_dapt:
        shared.append(("dapt", target, seed))
    if cfg.pretrain.data:
        shared.append(("pretrain", str(cfg.pretrain.data), seed, target if cfg.method.uses_dapt else None))
    return shared


def units(configs: dict) -> list[list[Cell]]:
    """The cells in groups that each run in one process, in the configs' order. Cells that share something
    (shared_by) are in one group: side by side, both would train it and race to write it."""
    keys = list(configs)
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    holder: dict = {}  # a shared thing -> the first cell that needs it
    for i, key in enumerate(keys):
        for thing in shared_by(key, configs[key]):
            parent[root(i)] = root(holder.setdefault(thing, i))
    groups: dict[int, list[Cell]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(root(i), []).append(key)
    return list(groups.values())


def run_unit(suite: str, base: str, out: Path, unit: dict, overrides: list[str], force: bool) -> dict:
    """Fine-tune a unit's cells ({cell: its config}) in order (a +self-train cell's teacher first); {cell: its run's
    record}."""
    metric = SUITES[suite]["metric"]
    runs = {}
    for (pair, column, seed), cfg in unit.items():
        source, target = pair.split(":")
        try:
            teacher = teacher_column(column)
            if teacher:  # its teacher cell first (reused when finished, also when listed as a column itself)
                teacher_cfg = cell_config(suite, base, out, source, target, teacher, seed, overrides)
                if cfg.method.self_train.teacher == str(teacher_cfg.job_dir / "checkpoint"):
                    run_cell(teacher_cfg, force=False)
            metrics = run_cell(cfg, force)
        except DomainliftError as e:  # which cell, then what is wrong
            raise type(e)(f"{pair} {column}: {e}") from e
        runs[(pair, column, seed)] = {
            "seed": cfg.train.seed,
            "score": metrics["target_test"][metric],
            "target_test": {k: v for k, v in metrics["target_test"].items() if k != "per_type"},
            "train_runtime_s": metrics["train_runtime_s"],
            # where the cell trained: a reused cell may come from another machine (older cells: "unknown")
            "device": f"{metrics.get('device', 'unknown')} {metrics.get('precision', '')}".strip(),
            "reused": metrics["reused"],
            "checkpoint": str(cfg.job_dir / "checkpoint"),
        }
    return runs


def run_unit_in_worker(log: Path, threads: int, *args) -> dict:
    """run_unit in a worker process: its output to the unit's own log, its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        for stream in (sys.stdout, sys.stderr):  # the file descriptors: also what libraries' own handlers write
            stream.flush()
            os.dup2(f.fileno(), stream.fileno())
    logging.root.handlers.clear()  # the worker's previous unit logged the same way: not twice
    cli.setup_logging()
    return run_unit(*args)


def stop_with_parent(parent: int) -> None:
    """Pool initializer: a worker whose main process is gone (killed, not interrupted: Ctrl-C reaches the workers
    too) exits, instead of training on as an orphan beside whatever runs next."""

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_units(suite: str, base: str, out: Path, configs: dict, overrides, force: bool, jobs: int) -> dict:
    """Every cell's run: one after another here, or in `jobs` worker processes a unit at a time. There a failed unit
    does not stop the others (their cells are kept for the next run to reuse): the first failure is raised when all
    have ended."""
    from tqdm import tqdm

    runs: dict = {}
    with tqdm(total=len(configs), desc="adapt-matrix", unit="run") as progress:
        if jobs == 1:
            for cell in configs:
                runs.update(run_unit(suite, base, out, {cell: configs[cell]}, overrides, force))
                progress.update()
            return runs
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pool = ProcessPoolExecutor(
            jobs, multiprocessing.get_context("spawn"), stop_with_parent, (os.getpid(),)
        )  # spawn: CUDA cannot be forked
        failures = []
        with pool:
            futures = {
                pool.submit(
                    run_unit_in_worker, out / "logs" / f"{configs[u[0]].job}.log", threads, suite, base, out,
                    {cell: configs[cell] for cell in u}, overrides, force,
                ): u
                for u in units(configs)
            }  # fmt: skip
            for future in as_completed(futures):
                unit = futures[future]
                try:
                    runs.update(future.result())
                except Exception as e:  # reported now, raised once every unit has ended
                    failures.append(e)
                    progress.write(f"failed: the unit of {len(unit)} cells from {configs[unit[0]].job}: {e}")
                progress.update(len(unit))
    if failures:
        raise failures[0]
    return runs


def run_cell(cfg, force: bool) -> dict:
    """Fine-tune one cell (or reuse its finished checkpoint) and return its target-test metrics."""
    ckpt = cfg.job_dir / "checkpoint"
    if not force and (ckpt / "metrics.json").is_file() and same_finetuning(ckpt, cfg):
        return {**json.loads((ckpt / "metrics.json").read_text()), "reused": True}
    run(cfg, overwrite=True)
    shutil.rmtree(cfg.job_dir / "run", ignore_errors=True)  # resumable Trainer states: GBs, not needed now
    return {**json.loads((ckpt / "metrics.json").read_text()), "reused": False}


def same_finetuning(ckpt: Path, cfg) -> bool:
    """Whether the finished cell at ckpt was fine-tuned with the settings that decide fine-tuning in cfg
    (JobConfig.finetuning_settings: keys added to the schema since it ran count as their defaults)."""
    try:
        recorded = config_from_dict(manifest.read(ckpt)["config"], origin=str(ckpt))
    except ConfigError:  # written by a schema that had keys this one no longer has
        return False
    return recorded.finetuning_settings() == cfg.finetuning_settings()


def summarise(cells: dict, pairs: list[str], methods: list[str], baseline: str) -> dict:
    """Per method: the mean over pairs and seeds, the mean over pairs for each seed (their range is the spread
    across seeds), and, against the baseline run on the same pair with the same seed: the mean gain, the standard
    deviation of the paired gains, and how many runs beat it."""
    means = {m: fmean(cells[p][m]["score"] for p in pairs) for m in methods}
    seeds = [r["seed"] for r in cells[pairs[0]][methods[0]]["runs"]]
    seed_means = {
        m: {str(seed): fmean(cells[p][m]["runs"][i]["score"] for p in pairs) for i, seed in enumerate(seeds)}
        for m in methods
    }
    out = {"mean": means, "seed_means": seed_means, "gain_over_baseline": {}, "runs_above_baseline": {}}
    if baseline not in methods:
        return out
    paired = {
        m: [r["score"] - b["score"] for p in pairs for r, b in zip(cells[p][m]["runs"], cells[p][baseline]["runs"])]
        for m in methods
    }
    out["gain_over_baseline"] = {m: means[m] - means[baseline] for m in methods}
    out["paired_gain_sd"] = {m: stdev(d) if len(d) > 1 else 0.0 for m, d in paired.items()}
    out["runs_above_baseline"] = {m: sum(d > 0 for d in paired[m]) for m in methods}
    return out


def markdown(report: dict) -> str:
    pairs, methods, cells, baseline = report["pairs"], report["methods"], report["cells"], report["baseline"]
    seeds = report["seeds"]

    def cell(c: dict) -> str:  # the mean, then each seed's score when there are several
        runs = " / ".join(f"{r['score']:.4f}" for r in c["runs"])
        return f"{c['score']:.4f}" + (f" ({runs})" if len(seeds) > 1 else "")

    lines = [
        "| pair | " + " | ".join(f"{m} (baseline)" if m == baseline else m for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for p in pairs:
        lines.append(f"| {p.replace(':', ' → ')} | " + " | ".join(cell(cells[p][m]) for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{report['mean'][m]:.4f}**" for m in methods) + " |")
    if len(seeds) > 1:
        per_seed = report["seed_means"]
        lines.append(
            "| mean per seed ("
            + " / ".join(map(str, seeds))
            + ") | "
            + " | ".join(" / ".join(f"{v:.4f}" for v in per_seed[m].values()) for m in methods)
            + " |"
        )
    if report["gain_over_baseline"]:
        gains, sd = report["gain_over_baseline"], report["paired_gain_sd"]
        lines.append(
            "| gain (points; ± sd of the paired gains) | "
            + " | ".join("" if m == baseline else f"{100 * gains[m]:+.2f} ± {100 * sd[m]:.2f}" for m in methods)
            + " |"
        )
        above, runs = report["runs_above_baseline"], len(pairs) * len(seeds)
        lines.append(
            "| runs above baseline | "
            + " | ".join("" if m == baseline else f"{above[m]} of {runs}" for m in methods)
            + " |"
        )
    lines.append(
        "| train time, s (mean; +self-train: labelling and student, the teacher is its base column's cell) | "
        + " | ".join(f"{fmean(cells[p][m]['train_runtime_s'] for p in pairs):.0f}" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def heatmap(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs, methods = report["pairs"], report["methods"]
    score = np.array(
        [[report["cells"][p][m]["score"] for m in methods] for p in pairs] + [[report["mean"][m] for m in methods]]
    )
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 0.5 * len(pairs) + 2))
    im = ax.imshow(score, cmap="viridis", aspect="auto")
    for i in range(score.shape[0]):
        for j in range(score.shape[1]):
            ax.text(j, i, f"{score[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(methods)), [f"{m}\n(baseline)" if m == report["baseline"] else m for m in methods])
    ax.set_yticks(range(len(pairs) + 1), [p.replace(":", " → ") for p in pairs] + ["mean"])
    seeds = report["seeds"]
    ax.set_title(f"target-test {report['metric']}" + (f", mean of seeds {seeds}" if len(seeds) > 1 else ""))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m benchmarks.adapt_matrix", __doc__, config_required=False)
    parser.add_argument("--suite", choices=list(SUITES), default="amazon")
    parser.add_argument(
        "--pairs",
        help=f"amazon: comma-separated source:target (default {','.join(CPU_PAIRS)}; all 12 on a GPU); "
        f"crossner: target domains (default {','.join(NER_DOMAINS)})",
    )
    parser.add_argument(
        "--methods",
        help="columns, comma-separated (amazon: method.name values or "
        f"{', '.join(AMAZON_SETTINGS)}; crossner: {', '.join(NER_SETTINGS)}); default all",
    )
    parser.add_argument("--seeds", help="training seeds, comma-separated (default: the config's train.seed)")
    parser.add_argument("--out", help="default artifacts/adapt-matrix (amazon), artifacts/adapt-matrix-crossner")
    parser.add_argument("--force", action="store_true", help="rerun cells that already finished")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained side by side (default 1; on a GPU, more)")
    args = parser.parse_args(argv)

    import torch

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: use 1 or more processes")
    suite = SUITES[args.suite]
    base = args.config or suite["config"]
    out = Path(args.out or suite["out"])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else suite["columns"]
    seeds = parse_seeds(args.seeds) if args.seeds else [None]
    if args.suite == "amazon":
        pairs = parse_pairs(args.pairs or ",".join(ALL_PAIRS if torch.cuda.is_available() else CPU_PAIRS))
    else:
        pairs = parse_ner_domains(args.pairs or ",".join(NER_DOMAINS))
    configs = {  # one seed's every cell before the next seed's: an interrupted matrix leaves whole seeds
        (f"{s}:{t}", m, seed): cell_config(args.suite, base, out, s, t, m, seed, args.overrides)
        for seed in seeds
        for s, t in pairs
        for m in methods
    }
    t0 = time.perf_counter()
    runs = run_units(args.suite, base, out, configs, args.overrides, args.force, args.jobs)
    cells: dict = {f"{s}:{t}": {m: {"runs": []} for m in methods} for s, t in pairs}
    for pair, method, seed in configs:
        cells[pair][method]["runs"].append(runs[(pair, method, seed)])
    for cell in (c for row in cells.values() for c in row.values()):
        cell["score"] = fmean(r["score"] for r in cell["runs"])
        cell["train_runtime_s"] = fmean(r["train_runtime_s"] for r in cell["runs"])
    report = {
        "suite": args.suite,
        "metric": suite["metric"],
        "baseline": suite["baseline"],
        "pairs": list(cells),
        "methods": methods,
        "seeds": sorted({cfg.train.seed for cfg in configs.values()}),
        "config": base,
        "overrides": args.overrides,
        "devices": sorted({r["device"] for row in cells.values() for c in row.values() for r in c["runs"]}),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cells": cells,
    }
    report.update(summarise(cells, report["pairs"], methods, suite["baseline"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    command = " ".join(["python -m benchmarks.adapt_matrix", *(sys.argv[1:] if argv is None else argv)])
    title = f"Domain adaptation ({args.suite}): target-test {suite['metric']}"
    trained_on = f"Cells trained on: {', '.join(report['devices'])}."
    (out / "results.md").write_text(f"# {title}\n\n`{command}`\n\n{trained_on}\n\n{table}\n")
    heatmap(report, out / "heatmap.png")
    print(table)
    print(f"results: {out}/results.md, results.json, heatmap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
