"""What every stage's command line shares: `--config` + dotted overrides, logging, and one error policy.

    @cli.entry
    def main(argv=None) -> int: ...

A DomainliftError (a bad config, data, artifact ...: domainlift/errors.py) prints `error: <message>` and exits 2,
the same in every command; anything else is a bug and keeps its traceback.
"""

import argparse
import functools
import logging
import os
import sys

from domainlift.errors import DomainliftError

STAGE_LOGGERS = ("finetune", "export", "domainlift", "serve", "benchmarks")


class JobParser(argparse.ArgumentParser):
    """Parses intermixed: overrides may come before, between or after the options (`--methods full x.y=1`)."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def job_parser(prog: str, doc: str, config_required: bool = True) -> argparse.ArgumentParser:
    parser = JobParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=config_required, help="job YAML, e.g. configs/sentiment-kitchen.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=1")
    return parser


def setup_logging() -> None:
    # Our stages log at INFO on the main process; libraries (ONNX Runtime's quantizer logs every tensor) at WARNING.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    level = logging.INFO if int(os.environ.get("LOCAL_RANK", "0")) == 0 else logging.WARNING
    for name in STAGE_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("transformers").setLevel(logging.WARNING)  # = transformers.logging.set_verbosity_warning()


def entry(main):
    """A command's main(argv) -> exit code, with logging set up and DomainliftError -> `error: ...`, exit 2."""

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        setup_logging()
        try:
            return main(argv)
        except DomainliftError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped
