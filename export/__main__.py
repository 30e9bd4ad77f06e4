"""Export a checkpoint: prune / quantize / convert to ONNX, verify every variant, pick the best.

python -m export --config configs/sentiment-kitchen.yaml
python -m export --config configs/sentiment-kitchen.yaml --variants onnx-int8-dynamic,onnx-int4 --force
python -m export --list
python -m export --config configs/sentiment-kitchen.yaml --compare artifacts/sentiment-kitchen-seed43/checkpoint
"""

import sys

from domainlift import cli, tasks
from domainlift.config import load_config
from export import variants
from export.recipe import Exporter


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m export", __doc__, config_required=False)
    parser.add_argument("--variants", help="comma-separated variant names (default: export.variants in the config)")
    parser.add_argument("--force", action="store_true", help="rebuild variants that are up to date")
    parser.add_argument("--list", action="store_true", help="print the variant names and exit")
    parser.add_argument("--compare", metavar="DIR", help="measure another model directory against the checkpoint "
                        "as the gate does (e.g. a retrain with another train.seed) and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        print(variants.valid_names())
        return 0
    if not args.config:
        parser.error("--config is required")
    cfg = load_config(args.config, args.overrides)
    if args.compare:
        q = Exporter(cfg).compare(args.compare)
        metric = tasks.MAIN_METRIC[cfg.data.task]
        held = f"{q['unlabeled_agreement']:.4f} of {q['unlabeled_texts']}" if "unlabeled_agreement" in q else "none"
        print(f"{args.compare} vs {cfg.job_dir / 'checkpoint'}: {metric} {q[metric]:.4f}, agreement on the test set "
              f"{q['agreement']:.4f}, on held-out target texts {held} (gate: {cfg.export.min_agreement})")  # fmt: skip
        return 0
    names = args.variants.split(",") if args.variants else list(cfg.export.variants)
    report = Exporter(cfg, force=args.force).run(names)
    print((cfg.job_dir / "export" / "report.md").read_text())
    return 0 if report["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
