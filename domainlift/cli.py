"""What every stage's command line shares: offline mode and the `--config` + dotted-overrides arguments."""

import argparse
import os


def stay_offline() -> None:
    """Everything is local: never wait on a model hub or telemetry endpoint that cannot be reached."""
    for var in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "BENTOML_DO_NOT_TRACK",
    ):
        os.environ.setdefault(var, "1")


def job_parser(prog: str, doc: str, config_required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=config_required, help="job YAML, e.g. configs/sentiment-kitchen.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=1")
    return parser
