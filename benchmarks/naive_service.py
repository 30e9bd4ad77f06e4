"""The baseline a user writes in ten minutes: the original checkpoint behind a transformers `pipeline` in a plain
HTTP service, one request at a time (no batching across requests, no export). `make bench-serve` compares the
domainlift service against it.

python -m benchmarks.naive_service --checkpoint artifacts/sentiment-kitchen/checkpoint --port 3002
"""

import argparse
import json
from pathlib import Path

from domainlift.cli import stay_offline

stay_offline()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_service", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a fine-tuned checkpoint directory")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument(
        "--max-length", type=int, default=256, help="tokens kept per text, as the job's model.max_length"
    )
    args = parser.parse_args(argv)

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from transformers import pipeline

    config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    task = "token-classification" if "TokenClassification" in config["architectures"][0] else "text-classification"
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

    route = "/classify" if task == "text-classification" else "/extract_entities"
    app = Starlette(routes=[Route(route, handle, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
