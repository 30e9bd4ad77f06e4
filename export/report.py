"""report.md (a table a person reads at a glance) and report.json (the same, for programs)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    ref = report["rows"][0]
    lines = [
        f"# Export report — {report['job']}",
        "",
        f"Test set: target domain, metric {report['metric']}; latency: batch 1, natural lengths, "
        f"{report['threads']} threads, median over the timed test inputs "
        "(median of 3 rounds, order rotated). "
        f"Gate: ratio >= {report['min_accuracy_ratio']}.",
        "",
        "| variant | status | size MB | size vs fp32 | " + report["metric"] + " | ratio | agreement | max abs Δlogit "
        "| p50 ms | speedup (p50) | speedup (total) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "metric" not in r:
            lines.append(f"| {r['variant']} | {r['status']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['variant']}{' **(best)**' if r['variant'] == report['best'] else ''} | {r['status']} "
            f"| {r['size_bytes'] / 2**20:.1f} | {r['size_bytes'] / ref['size_bytes']:.0%} | {r['metric']:.4f} "
            f"| {r['ratio']:.4f} | {r['agreement']:.4f} | {r['max_abs_dlogit']:.2e} | {r['latency_p50_ms']:.2f} "
            f"| {r['speedup_p50']:.2f}x | {r['speedup_total']:.2f}x |"
        )
    notes = [f"- **{r['variant']}** ({r['status']}): {r['reason']}" for r in report["rows"] if r.get("reason")]
    if notes:
        lines += ["", *notes]
    lines += ["", f"Best: **{report['best'] or 'none passed the gate'}** (`export/best`)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
