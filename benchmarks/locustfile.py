"""Locust load profile for a domainlift service: real target-domain texts, 1-8 of them per request.

    make loadtest                                                    # headless, bounded, with a summary
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:3000  # the web UI, against a running service

Each user posts back to back (no think time), like a client with a queue of texts to label. Settings come from
the environment, which `python -m benchmarks.loadtest` fills from the job config:
DOMAINLIFT_TEXTS (a JSON file with a list of texts; default: kitchen reviews from data/), DOMAINLIFT_ROUTE
(/classify or /extract_entities), DOMAINLIFT_MIN_TEXTS and DOMAINLIFT_MAX_TEXTS, DOMAINLIFT_API_KEY, and
DOMAINLIFT_EXPECTED (a JSON file {text: label}: a /classify answer with another label counts as a wrong answer,
for checking a deployment, or a fault test, with texts whose labels are known).
"""

import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, events, task

DEFAULT_TEXTS = Path(__file__).resolve().parent.parent / "data/amazon-reviews/kitchen.jsonl"


def load_texts() -> list[str]:
    if "DOMAINLIFT_TEXTS" in os.environ:
        return json.loads(Path(os.environ["DOMAINLIFT_TEXTS"]).read_text())
    return [json.loads(line)["text"] for line in DEFAULT_TEXTS.read_text().splitlines() if line.strip()]


TEXTS = load_texts()
ROUTE = os.environ.get("DOMAINLIFT_ROUTE", "/classify")
LOW = int(os.environ.get("DOMAINLIFT_MIN_TEXTS", "1"))
HIGH = int(os.environ.get("DOMAINLIFT_MAX_TEXTS", "8"))
KEY = os.environ.get("DOMAINLIFT_API_KEY")
HEADERS = {"Authorization": f"Bearer {KEY}"} if KEY else {}
EXPECTED = (
    json.loads(Path(os.environ["DOMAINLIFT_EXPECTED"]).read_text()) if "DOMAINLIFT_EXPECTED" in os.environ else {}
)
TEXTS_ANSWERED = [0]  # texts in successful answers, for texts/s (requests carry 1-8 texts each)
WRONG_ANSWERS = [0]  # answers whose label is not the expected one (DOMAINLIFT_EXPECTED)


class DomainLiftUser(FastHttpUser):
    @task
    def predict(self) -> None:
        batch = random.sample(TEXTS, random.randint(LOW, HIGH))
        with self.client.post(ROUTE, json={"texts": batch}, headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            elif len(resp.json()) != len(batch):
                resp.failure(f"{len(batch)} texts sent, {len(resp.json())} answers")
            else:
                TEXTS_ANSWERED[0] += len(batch)
                wrong = [t for t, a in zip(batch, resp.json()) if t in EXPECTED and a.get("label") != EXPECTED[t]]
                if wrong:
                    WRONG_ANSWERS[0] += len(wrong)
                    resp.failure(f"{len(wrong)} answers with a label other than the expected one")


@events.test_stop.add_listener
def write_text_count(environment, **_) -> None:
    """Locust counts requests; the summary needs texts. One process only (with --processes, each writes its own)."""
    if path := os.environ.get("DOMAINLIFT_TEXT_COUNT"):
        Path(path).write_text(json.dumps({"texts_answered": TEXTS_ANSWERED[0], "wrong_answers": WRONG_ANSWERS[0]}))
