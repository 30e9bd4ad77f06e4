"""Export a checkpoint: prune / quantize / convert to ONNX, verify every variant, pick the best.

python -m export --config configs/sentiment-kitchen.yaml
python -m export --config configs/sentiment-kitchen.yaml --variants onnx-int8-dynamic,onnx-int4 --force
"""

import sys

from domainlift.cli import job_parser, stay_offline

stay_offline()


def main(argv=None) -> int:
    parser = job_parser("python -m export", __doc__)
    parser.add_argument("--variants", help="comma-separated variant names (default: export.variants in the config)")
    parser.add_argument("--force", action="store_true", help="rebuild variants that are up to date")
    args = parser.parse_args(argv)

    from domainlift.config import ConfigError, load_config
    from domainlift.manifest import ManifestError
    from export.stage import Exporter
    from finetune.data import DataError
    from finetune.train import setup_logging

    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        names = args.variants.split(",") if args.variants else list(cfg.export.variants)
        report = Exporter(cfg, force=args.force).run(names)
    except (ConfigError, DataError, ManifestError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(cfg.job_dir / "export" / "report.md").read())
    return 0 if report["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
