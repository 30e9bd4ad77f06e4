"""The BentoML service: one exported domainlift model behind /classify or /extract_entities, adaptively batched.

    make serve        # imports artifacts/<job>/export/best into the model store, then runs:
    bentoml serve serve.service:DomainLift --arg-file artifacts/<job>/serve/args.yaml

Its settings are bento arguments (the job's `serve:` section plus `model`, the model-store tag), so a bento built
with `make bento` carries them and serves with no access to artifacts/.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
from bentoml.exceptions import NotFound
from pydantic import AfterValidator, BaseModel

from domainlift.config import serve_config
from domainlift.drift import DRIFT_THRESHOLD
from domainlift.errors import ConfigError, ManifestError
from domainlift.tasks import ROUTE
from serve.capture import Capture
from serve.gate import Gate, api_keys, quiet_client_errors
from serve.model_store import ARTIFACT, check_stored, summary
from serve.predictor import Predictor

# A container listens on every interface of its network: without a key it would serve anyone who can reach it.
if (
    os.environ.get("BENTOML_CONTAINERIZED") == "true"
    and not api_keys()
    and os.environ.get("DOMAINLIFT_INSECURE") != "1"
):
    raise ConfigError(
        "this container would serve without auth: run it with -e DOMAINLIFT_API_KEY=<key> (clients send "
        "'Authorization: Bearer <key>'), or -e DOMAINLIFT_INSECURE=1 to serve it open"
    )

ARGS = dict(vars(bentoml.use_arguments()))
MODEL_TAG = str(ARGS.pop("model", "sentiment-kitchen:latest"))
SETTINGS = serve_config(ARGS)
# workers x threads <= cores: each worker process gets its share of the cores for ONNX Runtime / torch.
THREADS = max(1, (os.cpu_count() or 1) // SETTINGS.workers)

# Domain-drift signals: the share of each label, and the model's confidence (a falling top-class probability is
# the first sign that traffic moved out of the domain it was adapted to), and how long the inputs are.
PREDICTIONS = bentoml.metrics.Counter(
    name="domainlift_predictions", documentation="Predicted labels (classify) or entity types", labelnames=["label"]
)
CONFIDENCE = bentoml.metrics.Histogram(
    name="domainlift_confidence",
    documentation="Top-class probability per text (classify) or per entity (extract_entities)",
    buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
INPUT_TOKENS = bentoml.metrics.Histogram(
    name="domainlift_input_tokens",
    documentation="Input length in tokens after truncation to the model's max_length",
    buckets=(8, 16, 32, 64, 128, 256, 512),
)
# Drift against the reference profile exported with the model (domainlift/drift.py): over DRIFT_THRESHOLD, the
# traffic has left the domain the model was adapted to (deploy/prometheus/alerts.yml fires DomainliftDrift).
DRIFT_SCORE = bentoml.metrics.Gauge(
    name="domainlift_drift_score",
    documentation=f"Largest PSI of the drift parts over the latest served texts; > {DRIFT_THRESHOLD} = drift",
)
DRIFT_PSI = bentoml.metrics.Gauge(
    name="domainlift_drift_psi", documentation="PSI of one drift part against the reference", labelnames=["part"]
)
RESPONSES = bentoml.metrics.Counter(
    name="domainlift_responses",
    documentation="Answers by HTTP status code (every route but the health probes; serve/gate.py)",
    labelnames=["code"],
)
CAPTURED = bentoml.metrics.Counter(name="domainlift_captured_texts", documentation="Texts written by serve.capture")
CAPTURE_ERRORS = bentoml.metrics.Counter(
    name="domainlift_capture_errors", documentation="Requests whose texts serve.capture could not write"
)


def check_texts(texts: list[str]) -> list[str]:
    """Per request, before any batching: the messages name the limit and how to get under it."""
    if not texts:
        raise ValueError("texts is empty: send at least one text")
    if len(texts) > SETTINGS.max_texts:
        raise ValueError(
            f"{len(texts)} texts in one request, over the limit of {SETTINGS.max_texts} (serve.max_texts): "
            "split it into several requests"
        )
    if SETTINGS.long_text == "reject":
        for i, text in enumerate(texts):
            if len(text) > SETTINGS.max_chars:
                raise ValueError(
                    f"texts[{i}] has {len(text)} characters, over the limit of {SETTINGS.max_chars} "
                    "(serve.max_chars): shorten it, or serve with serve.long_text=truncate"
                )
    return texts


Texts = Annotated[list[str], AfterValidator(check_texts)]


class Classification(BaseModel):
    label: str
    score: float  # probability of `label`
    scores: dict[str, float]  # probability of every label
    tokens: int  # input length in tokens, after truncation
    truncated: bool  # the text was cut (serve.max_chars or the model's max_length) before prediction


class Entity(BaseModel):
    type: str
    text: str  # == the request text[start:end]
    start: int  # character offsets into the request text
    end: int
    score: float  # mean probability of the entity's word tags


class Entities(BaseModel):
    entities: list[Entity]
    tokens: int
    truncated: bool


@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 60})
class DomainLift:
    # A class attribute, so `bentoml build` packs this model into the bento.
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        tag = str(self.model.tag)
        try:  # the files, their manifest, and the manifest the tag was made from
            check_stored(self.model.path_of(ARTIFACT), tag)
        except ManifestError as e:
            raise ManifestError(
                f"{e}. Run `make serve` again (it re-imports the variant from artifacts/<job>/export/), "
                f"or delete it with `bentoml models delete {tag}`"
            ) from e
        self.predictor = Predictor(
            self.model.path_of(ARTIFACT),
            threads=THREADS,
            micro_batch_size=SETTINGS.micro_batch_size,
            max_chars=SETTINGS.max_chars,
            verify=False,  # just checked
            drift_window=SETTINGS.drift_window,
        )
        c = SETTINGS.capture
        self.capture = Capture(c.dir, c.max_mb, c.file_mb, c.mask, CAPTURE_ERRORS.inc) if c.dir else None
        self.info = {"tag": MODEL_TAG, **summary(self.predictor.manifest)}
        self.predictor.warm_up()  # /readyz answers 200 only after this: loaded and warmed up

    @bentoml.api(
        batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def classify(self, texts: Texts) -> list[Classification]:
        self._require("text-classification")
        results = self.predictor.classify(texts)
        for r in results:
            PREDICTIONS.labels(label=r["label"]).inc()
            CONFIDENCE.observe(r["score"])
            INPUT_TOKENS.observe(r["tokens"])
        self._watch(texts)
        return results

    @bentoml.api(
        batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def extract_entities(self, texts: Texts) -> list[Entities]:
        self._require("token-classification")
        results = self.predictor.extract_entities(texts)
        for r in results:
            INPUT_TOKENS.observe(r["tokens"])
            for e in r["entities"]:
                PREDICTIONS.labels(label=e["type"]).inc()
                CONFIDENCE.observe(e["score"])
        self._watch(texts)
        return results

    def _watch(self, texts: list[str]) -> None:
        """Drift gauges from the predictor's window, and the texts to the capture when it is on."""
        scores = self.predictor.window.scores() if self.predictor.window else {}
        for part, value in scores.items():
            (DRIFT_SCORE if part == "score" else DRIFT_PSI.labels(part=part)).set(value)
        if self.capture and self.capture.add(texts):
            CAPTURED.inc(len(texts))

    @bentoml.api(route="/model")
    def model_info(self) -> dict:
        """The served variant: job, variant, task, labels, its test score and ratio to the checkpoint, hashes."""
        return self.info

    def _require(self, task: str) -> None:
        if self.predictor.task != task:
            does = self.predictor.task
            raise NotFound(f"this service's model ({self.info['job']}) does {does}: POST to {ROUTE[does]}")


# Auth, limits, one error shape, response counts: serve/gate.py
DomainLift.add_asgi_middleware(Gate, settings=SETTINGS, responses=RESPONSES)
if not SETTINGS.log_request_text:
    quiet_client_errors()
