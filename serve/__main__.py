"""Serve an exported variant with BentoML: import it into the model store, then `bentoml serve` (or build a bento).

python -m serve --config configs/sentiment-kitchen.yaml                   # artifacts/<job>/export/best, 127.0.0.1:3000
python -m serve --config configs/sentiment-kitchen.yaml --port 3001 serve.variant=onnx-int8-dynamic
python -m serve --config configs/sentiment-kitchen.yaml --build            # bentoml build: a self-contained bento
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import yaml

from domainlift import cli, manifest, quality
from domainlift.config import load_config
from domainlift.errors import ConfigError
from serve.gate import api_keys
from serve.model_store import import_variant, served_variant

SERVICE = "serve.service:DomainLift"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def servable(cfg, variant_dir) -> list[str]:
    """Why this variant should not be served as the job's best: rejected by the gate (today's
    export.min_accuracy_ratio and export.min_agreement), or exported from a checkpoint that is not the job's current
    one."""
    m = manifest.read(variant_dir)
    e = cfg.export
    problems = quality.gate_problems(m["quality"], e.min_accuracy_ratio, e.min_agreement)
    if not m["quality"].get("accepted") and not problems:
        problems.append("the export gate rejected it")
    checkpoint = Path(variant_dir).resolve().parent.parent / "checkpoint"  # its job's (a promoted candidate's own)
    if (checkpoint / manifest.MANIFEST).is_file() and manifest.read(checkpoint)["sha256"] != m["parent"]["sha256"]:
        problems.append("it was exported from an earlier checkpoint than the job's current one")
    return problems


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m serve", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--build", action="store_true", help="build a bento (bentofile.yaml) instead of serving")
    parser.add_argument(
        "--insecure", action="store_true", help="serve a non-loopback --host without DOMAINLIFT_API_KEY (no auth)"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not args.build and args.host not in LOOPBACK and not api_keys() and not args.insecure:
        raise ConfigError(
            f"--host {args.host} opens the service to other machines, and DOMAINLIFT_API_KEY is not set: set it "
            "(clients then send 'Authorization: Bearer <key>'), or pass --insecure to serve it without auth"
        )
    variant_dir = served_variant(cfg)
    if not variant_dir.is_dir():
        raise ConfigError(
            f"{variant_dir} does not exist: run `make export JOB={cfg.job}` first, or set serve.variant to one of "
            f"the exported variants"
        )
    for problem in servable(cfg, variant_dir):
        if cfg.serve.variant == "best":
            raise ConfigError(
                f"export/best -> {variant_dir.resolve().name}: {problem}. Run `make export JOB={cfg.job}` again, or "
                "serve a variant by name (serve.variant=<name>) to serve it anyway"
            )
        print(
            f"warning: {variant_dir.name}: {problem}; serving it anyway because it was asked for by name",
            file=sys.stderr,
        )
    tag = import_variant(variant_dir)
    arg_file = cfg.job_dir / "serve" / "args.yaml"
    arg_file.parent.mkdir(parents=True, exist_ok=True)
    arg_file.write_text(yaml.safe_dump({"model": tag, **dataclasses.asdict(cfg.serve)}, sort_keys=False))
    print(f"model {tag} ({variant_dir.resolve().name}) is in the BentoML store; bento arguments in {arg_file}")
    bentoml = [sys.executable, "-m", "bentoml"]
    if args.build:
        return subprocess.call([*bentoml, "build", "--arg-file", str(arg_file)])
    command = [*bentoml, "serve", SERVICE, "--host", args.host, "--port", str(args.port), "--arg-file", str(arg_file)]
    os.execv(sys.executable, command)  # the server takes over this process, so Ctrl-C and signals reach it


if __name__ == "__main__":
    sys.exit(main())
