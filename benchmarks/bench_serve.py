"""The comparison a user asks for: the same Locust profile against three services, one after another, on this machine.

python -m benchmarks.bench_serve --config configs/sentiment-kitchen.yaml      # = make bench-serve

  (a) the domainlift service serving serve.variant (default: best), adaptive batching on
  (b) the same service with batching off (serve.batching=false)
  (c) the naive baseline: the original checkpoint behind a transformers pipeline, one request at a time

Each starts on a free loopback port, is load-tested (the job's loadtest: section) and stopped before the next.
Writes artifacts/<job>/reports/bench-serve.{json,md} plus each run's Locust CSV and HTML.
"""

import json
import os
import sys
import urllib.request

from benchmarks.loadtest import ROOT, prepare, run_locust
from benchmarks.server import running_server
from domainlift import cli
from domainlift.errors import ServiceError

SERVICES = {
    "a": "domainlift, adaptive batching",
    "b": "domainlift, batching off",
    "c": "naive: checkpoint + transformers pipeline, unbatched",
}


def commands(args, cfg) -> dict[str, list[str]]:
    serve = [sys.executable, "-m", "serve", "--config", args.config, *args.overrides]
    naive = [sys.executable, "-m", "benchmarks.naive_service", "--checkpoint", str(cfg.job_dir / "checkpoint")]
    return {
        "a": [*serve, "serve.batching=true"],
        "b": [*serve, "serve.batching=false"],
        "c": [*naive, "--max-length", str(cfg.model.max_length)],
    }


def served_variant(url: str) -> str:
    """Which export variant the domainlift service serves (POST /model)."""
    api_key = os.environ.get("DOMAINLIFT_API_KEY")
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    with urllib.request.urlopen(urllib.request.Request(url + "/model", data=b"{}", headers=headers)) as resp:
        return json.load(resp)["variant"]


def table(results: dict) -> str:
    a, b, c = (results[k] for k in "abc")
    lines = [
        f"(a) and (b) serve the export variant {a['variant']}; (c) the checkpoint in PyTorch fp32.",
        "",
        "| service | texts/s | requests/s | p50 ms | p95 ms | p99 ms | failed | Locust's CPU share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        lines.append(
            f"| ({key}) {SERVICES[key]} | {r['texts_per_s']:.1f} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} of {r['requests']} "
            f"| {r['locust_cpu_share']:.0%} |"
        )
    lines += [
        "",
        f"(a) / (c): {a['texts_per_s'] / c['texts_per_s']:.2f}x the texts/s, p99 {a['p99_ms'] / c['p99_ms']:.2f}x",
        f"(a) / (b): {a['texts_per_s'] / b['texts_per_s']:.2f}x the texts/s, p99 {a['p99_ms'] / b['p99_ms']:.2f}x",
    ]
    return "\n".join(lines)


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m benchmarks.bench_serve", __doc__)
    args = parser.parse_args(argv)
    cfg, out, texts_file = prepare(args)
    results = {}
    for key, command in commands(args, cfg).items():
        print(f"({key}) {SERVICES[key]}: {cfg.loadtest.users} users for {cfg.loadtest.run_time_s}s", flush=True)
        try:
            with running_server(command, cwd=ROOT, log_dir=out) as url:
                results[key] = run_locust(url, cfg, texts_file, out, name=f"bench-serve-{key}")
                if key != "c":
                    results[key]["variant"] = served_variant(url)
        except ServiceError as e:  # a service did not start (e.g. nothing exported yet): its log says why
            raise ServiceError(f"({key}) {e}") from e
    report = table(results)
    (out / "bench-serve.json").write_text(json.dumps({"services": SERVICES, "results": results}, indent=2) + "\n")
    (out / "bench-serve.md").write_text(f"# bench-serve: {cfg.job}\n\n{report}\n")
    print(report)
    return 0 if all(r["failures"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
