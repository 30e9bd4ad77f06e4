"""Adapt the served model to the traffic it captured, export it, gate it, and promote it when it is better.

python -m readapt --config configs/sentiment-kitchen.yaml readapt.target=data/amazon-reviews/books.jsonl
"""

import json
import sys

from domainlift import cli
from readapt.recipe import run


@cli.entry
def main(argv=None) -> int:
    args = cli.job_parser("python -m readapt", __doc__).parse_args(argv)
    decision = run(args.config, args.overrides)
    print(json.dumps(decision, indent=2))
    return 0 if decision["promoted"] else 1


if __name__ == "__main__":
    sys.exit(main())
