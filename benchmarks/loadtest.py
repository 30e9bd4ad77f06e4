"""Load-test a domainlift service with Locust: headless, bounded users and time, real target-domain texts.

python -m benchmarks.loadtest --config configs/sentiment-kitchen.yaml        # starts `python -m serve` for the run
python -m benchmarks.loadtest --config configs/sentiment-kitchen.yaml --url http://127.0.0.1:3000  # a running one

Writes artifacts/<job>/reports/loadtest_*.csv, loadtest.html (Locust's own) and loadtest.json (requests/s,
texts/s, p50/p95/p99, failures). Exits 1 when any request failed or p99 is over loadtest.max_p99_ms.
More load than one Locust process gives: `locust -f benchmarks/locustfile.py --processes 4 ...` (or a master
with --master and workers with --worker), same profile.
"""

import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.server import memory_mb, running_server
from domainlift import cli, tasks
from domainlift.config import load_config
from domainlift.data import build_splits

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"


def target_texts(cfg) -> list[str]:
    """The target domain's test texts, as a client would send them (NER sentences joined back into text)."""
    return tasks.texts_of(build_splits(cfg.data).test)


def prepare(args):
    """The job config, its reports directory, and the target test texts written where the locustfile reads them."""
    cfg = load_config(args.config, args.overrides)
    texts = target_texts(cfg)
    out = cfg.job_dir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    texts_file = out / "loadtest_texts.json"
    texts_file.write_text(json.dumps(texts))
    return cfg, out, texts_file


def run_locust(url: str, cfg, texts_file: Path, out: Path, name: str = "loadtest") -> dict:
    """One headless Locust run against url; returns its summary (Locust's aggregated row, plus texts/s)."""
    lt = cfg.loadtest
    count_file = out / f"{name}_texts.json"
    env = {
        "DOMAINLIFT_TEXTS": str(texts_file),
        "DOMAINLIFT_ROUTE": tasks.ROUTE[cfg.data.task],
        "DOMAINLIFT_MIN_TEXTS": str(lt.min_texts),
        "DOMAINLIFT_MAX_TEXTS": str(lt.max_texts),
        "DOMAINLIFT_TEXT_COUNT": str(count_file),
    }
    command = [
        *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"),
        *("--users", str(lt.users), "--spawn-rate", str(lt.spawn_rate), "--run-time", f"{lt.run_time_s}s"),
        *("--host", url, "--csv", str(out / name), "--html", str(out / f"{name}.html"), "--stop-timeout", "30"),
    ]
    # Locust shares the machine with the server: its CPU time (it and the processes it waited for) over the run's
    # wall time and the machine's cores is the share of the CPU the server did not get.
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(command, env={**os.environ, **env}, check=False)  # its exit status is judged from the stats
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - start
    locust_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    with open(out / f"{name}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests, rps = int(row["Request Count"]), float(row["Requests/s"])
    counts = json.loads(count_file.read_text()) if count_file.is_file() else {}
    texts = counts.get("texts_answered", 0)
    return {
        "url": url,
        "users": lt.users,
        "run_time_s": lt.run_time_s,
        "texts_per_request": [lt.min_texts, lt.max_texts],
        "requests": requests,
        "failures": int(row["Failure Count"]),
        "requests_per_s": rps,
        "texts_per_s": texts * rps / requests if requests else 0.0,  # over Locust's own measured duration
        "wrong_answers": counts.get("wrong_answers", 0),  # with DOMAINLIFT_EXPECTED (benchmarks/locustfile.py)
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "locust_cpu_s": locust_cpu_s,
        "locust_cpu_share": locust_cpu_s / (wall * (os.cpu_count() or 1)),
    }


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m benchmarks.loadtest", __doc__)
    parser.add_argument("--url", help="a running service (default: start `python -m serve` on a free port)")
    args = parser.parse_args(argv)
    cfg, out, texts_file = prepare(args)
    if args.url:
        summary = {**run_locust(args.url, cfg, texts_file, out), "server_memory_mb": memory_mb(args.url)}
    else:
        serve = [sys.executable, "-m", "serve", "--config", args.config, *args.overrides]
        with running_server(serve, cwd=ROOT, log_dir=out) as url:  # ServiceError (exit 2) when it does not start
            summary = {**run_locust(url, cfg, texts_file, out), "server_memory_mb": memory_mb(url)}
    bound = cfg.loadtest.max_p99_ms
    summary["max_p99_ms"] = bound
    summary["passed"] = summary["failures"] == 0 and summary["requests"] > 0 and summary["p99_ms"] <= bound
    (out / "loadtest.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['requests']} requests, {summary['failures']} failed; {summary['requests_per_s']:.1f} requests/s, "
        f"{summary['texts_per_s']:.1f} texts/s; p50 {summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, "
        f"p99 {summary['p99_ms']:.0f} ms (bound {bound:.0f} ms) -> {'PASSED' if summary['passed'] else 'FAILED'}"
    )
    if summary["server_memory_mb"] is not None:
        print(f"server memory (all its processes, resident): {summary['server_memory_mb']:.0f} MiB")
    print(f"reports: {out}/loadtest.json, loadtest.html, loadtest_stats.csv")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
