"""Fine-tune a pretrained encoder on a domain: data + model -> artifacts/<job>/checkpoint/.

python -m finetune --config configs/sentiment-kitchen.yaml
python -m finetune --config configs/sentiment-kitchen.yaml train.epochs=1 data.max_train_samples=200
torchrun --nproc_per_node 2 -m finetune --config configs/<job>.yaml     # several GPUs / processes
"""

import sys

from domainlift import cli
from domainlift.config import load_config
from finetune.recipe import run


@cli.entry
def main(argv=None) -> int:
    parser = cli.job_parser("python -m finetune", __doc__)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last saved state in artifacts/<job>/run"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint / earlier run state")
    args = parser.parse_args(argv)
    run(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
