"""Export a checkpoint: prune / quantize / convert to ONNX, verify every variant, pick the best.

python -m export --config configs/sentiment-kitchen.yaml
python -m export --config configs/sentiment-kitchen.yaml --variants onnx-int8-dynamic,onnx-int4 --force
python -m export --list
"""

import sys

from domainlift import cli
from domainlift.config import load_config
from export import variants
from export.recipe import Exporter


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m export", __doc__, config_required=False)
    parser.add_argument("--variants", help="comma-separated variant names (default: export.variants in the config)")
    parser.add_argument("--force", action="store_true", help="rebuild variants that are up to date")
    parser.add_argument("--list", action="store_true", help="print the variant names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(variants.valid_names())
        return 0
    if not args.config:
        parser.error("--config is required")
    cfg = load_config(args.config, args.overrides)
    names = args.variants.split(",") if args.variants else list(cfg.export.variants)
    report = Exporter(cfg, force=args.force).run(names)
    print((cfg.job_dir / "export" / "report.md").read_text())
    return 0 if report["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
