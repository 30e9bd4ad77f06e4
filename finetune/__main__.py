"""Fine-tune a pretrained encoder on a domain: data + model -> artifacts/<job>/checkpoint/.

python -m finetune --config configs/sentiment-kitchen.yaml
python -m finetune --config configs/sentiment-kitchen.yaml train.epochs=1 data.max_train_samples=200
torchrun --nproc_per_node 2 -m finetune --config configs/<job>.yaml     # several GPUs / processes
"""

import sys

from domainlift.cli import job_parser, stay_offline

stay_offline()


def main(argv=None) -> int:
    parser = job_parser("python -m finetune", __doc__)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last saved state in artifacts/<job>/run"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint / earlier run state")
    args = parser.parse_args(argv)

    from domainlift.config import ConfigError, load_config
    from domainlift.manifest import ManifestError
    from finetune.data import DataError
    from finetune.train import run, setup_logging

    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, DataError, ManifestError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
