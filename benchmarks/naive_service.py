"""The baseline a user writes in ten minutes: the original checkpoint behind a transformers `pipeline` in a plain
HTTP service, one request at a time (no batching across requests, no export). `make bench-serve` compares the
domainlift service against it.

python -m benchmarks.naive_service --checkpoint artifacts/sentiment-kitchen/checkpoint --port 3002
"""

import argparse
import json
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import pipeline

from domainlift import cli, tasks


@cli.entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_service", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint directory")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument(
        "--max-length", type=int, default=256, help="tokens kept per text, as the job's model.max_length"
    )
    args = parser.parse_args(argv)
    config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    task = tasks.task_of(config["architectures"][0])
    model = pipeline(task, model=args.checkpoint, device=-1)  # PyTorch fp32 eager on the CPU
    if task == "text-classification":
        options = {"truncation": True, "max_length": args.max_length}
    else:
        options = {"aggregation_strategy": "first"}
        model.tokenizer.model_max_length = args.max_length

    async def handle(request):
        out = model((await request.json())["texts"], **options)  # in the event loop: one request at a time
        return JSONResponse(json.loads(json.dumps(out, default=float)))  # numpy scores -> JSON numbers

    async def ready(_):
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route(tasks.ROUTE[task], handle, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
