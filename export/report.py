"""report.md (a table a person reads at a glance) and report.json (the same, for programs)."""

from __future__ import annotations

import json
from pathlib import Path


def _range(r: dict, key: str) -> str:
    lo, hi = r.get(f"{key}_range") or (None, None)
    return f"{r[key]:.2f}x ({lo:.2f}–{hi:.2f})" if lo is not None else f"{r[key]:.2f}x"


def _ci(r: dict) -> str:
    ci = r.get("ratio_ci95")
    return f"{r['ratio']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{r['ratio']:.4f}"


def _held_out(r: dict) -> str:
    return f"{r['unlabeled_agreement']:.4f}" if r.get("unlabeled_agreement") is not None else "—"


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    ref = report["rows"][0]
    held = next((r["unlabeled_texts"] for r in report["rows"] if r.get("unlabeled_texts")), 0)
    lines = [
        f"# Export report — {report['job']}",
        "",
        f"Test set: target domain, metric {report['metric']}; ratio = the variant's metric / the checkpoint's, "
        "[95% paired-bootstrap interval]; agreement = same prediction as the checkpoint, on the test set and on "
        f"{held} held-out unlabeled target texts. Latency: batch 1, natural lengths, {report['threads']} threads, "
        f"median over the timed test inputs; each model timed in {report['latency_rounds']} interleaved rounds, "
        "speedup = median of the per-round ratios (lowest–highest round). "
        f"Gate: ratio >= {report['min_accuracy_ratio']} and held-out agreement >= {report['min_agreement']}; "
        "best = the accepted variant with the lowest p50.",
        "",
        "| variant | status | size MB | size vs fp32 | " + report["metric"] + " | ratio [95% CI] | agreement (test) "
        "| agreement (held-out) | max abs Δlogit | p50 ms | speedup (p50) | speedup (total) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "metric" not in r:
            lines.append(f"| {r['variant']} | {r['status']} | | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['variant']}{' **(best)**' if r['variant'] == report['best'] else ''} | {r['status']} "
            f"| {r['size_bytes'] / 2**20:.1f} | {r['size_bytes'] / ref['size_bytes']:.0%} | {r['metric']:.4f} "
            f"| {_ci(r)} | {r['agreement']:.4f} | {_held_out(r)} | {r['max_abs_dlogit']:.2e} "
            f"| {r['latency_p50_ms']:.2f} | {_range(r, 'speedup_p50')} | {_range(r, 'speedup_total')} |"
        )
    notes = [f"- **{r['variant']}** ({r['status']}): {r['reason']}" for r in report["rows"] if r.get("reason")]
    if notes:
        lines += ["", *notes]
    lines += ["", f"Best: **{report['best'] or 'none passed the gate'}** (`export/best`)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
