"""The domain moves, the model follows: drift seen in serving, an alert, then `make readapt`, measured end to end.

python -m benchmarks.drift_demo --config configs/sentiment-kitchen.yaml --prometheus \\
    --before data/amazon-reviews/unlabeled/kitchen.jsonl --after data/amazon-reviews/unlabeled/books.jsonl \\
    readapt.target=data/amazon-reviews/books.jsonl

1. the job's served model starts with traffic capture on (a fresh directory, reports/drift-demo/capture) and,
   with --prometheus, a real Prometheus scrapes it every second with the shipped rules (deploy/prometheus/alerts.yml,
   their `for:` shortened to --alert-for so the demo does not wait 10 minutes)
2. --before-texts texts of --before (traffic of the model's own domain), then --after-texts of --after (shifted
   traffic) arrive, --per-request at a time; domainlift_drift_score is read from /metrics after every request and
   the DomainliftDrift alert's state from Prometheus
3. the service stops, and `readapt` adapts the served model to what was captured, exports it, gates it on
   readapt.target's test part, and promotes it if it is better there
4. reports/drift-demo.{json,md} and drift-demo.png: the drift score over the run, when it crossed the threshold and
   when the alert fired, both models' score on the new domain, and the time of each step
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.loadtest import ROOT
from benchmarks.server import free_port, running_server
from domainlift import cli, drift
from domainlift.config import load_config
from domainlift.errors import ConfigError, ServiceError
from readapt.recipe import run as readapt

RULES = ROOT / "deploy/prometheus/alerts.yml"


def read_texts(path: str, n: int, max_chars: int) -> list[str]:
    """The first n texts of path that the service accepts (a client keeps to serve.max_chars, as one would)."""
    texts = [json.loads(line)["text"] for line in Path(path).read_text().splitlines() if line.strip()]
    kept = [t for t in texts if len(t) <= max_chars]
    if len(kept) < len(texts):
        print(f"{path}: {len(texts) - len(kept)} texts over serve.max_chars={max_chars} left out")
    if len(kept) < n:
        raise ConfigError(f"{path} holds {len(kept)} texts within serve.max_chars; the demo asks for {n}")
    return kept[:n]


def post(url: str, path: str, body: dict | None, key: str | None) -> bytes:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data, headers=headers), timeout=120) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise ServiceError(f"{path} answered {e.code}: {e.read().decode(errors='replace')}") from e


def drift_score(url: str, key: str | None) -> float | None:
    m = re.search(r"^domainlift_drift_score(?:\{[^}]*\})? (\S+)$", post(url, "/metrics", None, key).decode(), re.M)
    return float(m.group(1)) if m else None


class Prometheus:
    """A real Prometheus on a free loopback port, scraping `url` every second with the shipped rules."""

    def __init__(self, url: str, key: str | None, alert_for: str, work: Path):
        binary = shutil.which("prometheus")
        if binary is None:
            raise ConfigError("--prometheus needs the prometheus binary (Debian: apt-get install prometheus)")
        rules = re.sub(r"for: \S+", f"for: {alert_for}", RULES.read_text())
        (work / "alerts.yml").write_text(rules)
        target = url.removeprefix("http://")
        auth = f"\n    authorization: {{credentials: {key}}}" if key else ""
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\n"
            f"scrape_configs:\n  - job_name: domainlift\n    static_configs: [{{targets: ['{target}']}}]{auth}\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(work / "prometheus.log", "w")  # noqa: SIM115  (open while it runs)
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"prometheus did not start: {(work / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def alert_state(self, name: str) -> str:
        """inactive, pending or firing."""
        with urllib.request.urlopen(self.url + "/api/v1/alerts", timeout=10) as r:
            alerts = json.load(r)["data"]["alerts"]
        return next((a["state"] for a in alerts if a["labels"]["alertname"] == name), "inactive")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def plot(samples: list[dict], shift_at: int, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([s["texts"] for s in samples], [s["score"] for s in samples], label="domainlift_drift_score")
    ax.axhline(drift.DRIFT_THRESHOLD, color="r", linestyle="--", label=f"threshold {drift.DRIFT_THRESHOLD}")
    ax.axvline(shift_at, color="k", linestyle=":", label="shifted traffic begins")
    fired = next((s["texts"] for s in samples if s.get("alert") == "firing"), None)
    if fired is not None:
        ax.axvline(fired, color="orange", label="DomainliftDrift fires")
    ax.set(xlabel="texts served", ylabel="drift score (largest PSI)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m benchmarks.drift_demo", __doc__)
    parser.add_argument("--before", required=True, help="JSONL texts of the model's own domain (served first)")
    parser.add_argument("--after", required=True, help="JSONL texts of the shifted traffic (served second)")
    parser.add_argument("--before-texts", type=int, default=400)
    parser.add_argument("--after-texts", type=int, default=800)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--prometheus", action="store_true", help="a real Prometheus evaluates the alert rules")
    parser.add_argument("--alert-for", default="5s", help="the alert rules' `for:` in the demo (shipped: 10m)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    limit = cfg.serve.max_chars
    before, after = read_texts(args.before, args.before_texts, limit), read_texts(args.after, args.after_texts, limit)
    out = cfg.job_dir / "reports"
    capture = out / "drift-demo" / "capture"
    shutil.rmtree(capture, ignore_errors=True)  # this run's traffic only
    overrides = [*args.overrides, f"serve.capture.dir={capture}"]
    key = os.environ.get("DOMAINLIFT_API_KEY")
    serve = [sys.executable, "-m", "serve", "--config", args.config, *overrides]
    samples, times = [], {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="domainlift-prometheus-") as work:
        with running_server(serve, cwd=ROOT, log_dir=out) as url:
            times["service_start_s"] = time.perf_counter() - t0
            prometheus = Prometheus(url, key, args.alert_for, Path(work)) if args.prometheus else None
            try:
                t1 = time.perf_counter()
                traffic = before + after
                for start in range(0, len(traffic), args.per_request):
                    post(url, "/classify" if cfg.data.task == "text-classification" else "/extract_entities",
                         {"texts": traffic[start : start + args.per_request]}, key)  # fmt: skip
                    sample = {"texts": start + args.per_request, "score": drift_score(url, key)}
                    if prometheus:
                        sample["alert"] = prometheus.alert_state("DomainliftDrift")
                    samples.append(sample)
                if prometheus:  # the alert's `for:` may still be running when the traffic ends
                    deadline = time.monotonic() + 60
                    while samples[-1]["alert"] != "firing" and time.monotonic() < deadline:
                        time.sleep(1)
                        samples.append({**samples[-1], "alert": prometheus.alert_state("DomainliftDrift")})
                times["traffic_s"] = time.perf_counter() - t1
            finally:
                if prometheus:
                    prometheus.stop()
    t2 = time.perf_counter()
    decision = readapt(args.config, overrides)
    times["readapt_s"] = time.perf_counter() - t2
    report = summarise(cfg.job, args, len(before), len(after), samples, decision, times)
    (out / "drift-demo.json").write_text(json.dumps(report, indent=2) + "\n")
    title = f"{cfg.job}: {Path(args.before).stem} -> {Path(args.after).stem} traffic"
    plot(samples, len(before), out / "drift-demo.png", title)
    (out / "drift-demo.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"reports: {out}/drift-demo.md, drift-demo.json, drift-demo.png")
    return 0


def summarise(job: str, args, n_before: int, n_after: int, samples: list[dict], decision: dict, times: dict) -> dict:
    in_domain = [s["score"] for s in samples if s["texts"] <= n_before and s["score"] is not None]
    shifted = [s for s in samples if s["texts"] > n_before and s["score"] is not None]
    over = [s["texts"] - n_before for s in shifted if s["score"] > drift.DRIFT_THRESHOLD]
    fired = [s["texts"] - n_before for s in samples if s.get("alert") == "firing"]
    return {
        "job": job,
        "before": args.before,
        "after": args.after,
        "texts": {"before": n_before, "after": n_after, "per_request": args.per_request},
        "threshold": drift.DRIFT_THRESHOLD,
        "score_before_shift": {"max": max(in_domain, default=None), "last": in_domain[-1] if in_domain else None},
        "score_after_shift": {"max": max((s["score"] for s in shifted), default=None), "last": shifted[-1]["score"]},
        "crossed_after_shifted_texts": over[0] if over else None,
        "alert_fired_after_shifted_texts": fired[0] if fired else None,
        "prometheus_alert_for": args.alert_for if args.prometheus else None,
        "readapt": decision,
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "samples": samples,
    }


def markdown(r: dict) -> str:
    d, t = r["readapt"], r["texts"]
    candidate = f"{d['candidate']['score']:.4f}" if d["candidate"]["score"] is not None else "none passed the gate"
    alert = (
        f"; DomainliftDrift fired after {r['alert_fired_after_shifted_texts']} (`for: {r['prometheus_alert_for']}`)"
        if r["prometheus_alert_for"]
        else ""
    )
    return "\n".join(
        [
            f"# Drift demo: {r['job']}",
            "",
            f"Traffic: {t['before']} texts of `{r['before']}`, then {t['after']} of `{r['after']}`, "
            f"{t['per_request']} a request.",
            f"Drift score (threshold {r['threshold']}): at most {r['score_before_shift']['max']:.3f} before the shift, "
            f"{r['score_after_shift']['last']:.3f} at the end; over the threshold after "
            f"{r['crossed_after_shifted_texts']} shifted texts{alert}.",
            f"readapt ({d['method']}, {d['captured_texts']} captured texts): {d['metric']} on `{d['test_set']}` test: "
            f"served {d['served']['score']:.4f}, candidate {candidate} -> "
            f"{'promoted' if d['promoted'] else 'rejected'}.",
            "Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["times_s"].items()) + ".",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
