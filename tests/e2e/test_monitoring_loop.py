"""The domain moves, the model follows, end to end on a tiny model: the real service with capture on, in-domain then
shifted traffic (real book reviews), a real Prometheus evaluating the shipped alert rules, then readapt: adapt,
export, gate, promote (benchmarks/drift_demo.py, which docs/monitoring.md runs on the real model)."""

import json
import random
import shutil

import bentoml
import pytest
from conftest import FILLER, ROOT, write_easy_job

from benchmarks import drift_demo
from domainlift import drift, manifest
from domainlift.config import load_config
from export.recipe import Exporter
from finetune.recipe import run as finetune
from readapt import __main__ as readapt_cli
from serve.model_store import PROMOTED, served_variant

pytestmark = pytest.mark.slow
BOOKS_POOL = str(ROOT / "data/amazon-reviews/unlabeled/books.jsonl")
HAVE_PROMETHEUS = shutil.which("prometheus") is not None


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("loop")
    cfg_path = write_easy_job(
        root,
        tiny_model_dir,
        job="loop",
        model={"max_length": 32},
        export={"variants": ["onnx-fp32"], "latency_samples": 5, "drift_samples": 200},
        serve={"drift_window": 200, "max_latency_ms": 5000},
        readapt={"target": str(ROOT / "data/amazon-reviews/books.jsonl"), "min_texts": 100},
    )
    cfg = load_config(cfg_path)
    finetune(cfg)
    Exporter(cfg).run(["onnx-fp32"])
    rng = random.Random(7)  # the model's own domain: more keyword sentences like its training data
    lines = []
    for i in range(300):
        words = rng.sample(FILLER, 6)
        words.insert(rng.randrange(6), ["excellent", "terrible"][i % 2])
        lines.append(json.dumps({"text": " ".join(words)}))
    (root / "in-domain.jsonl").write_text("\n".join(lines) + "\n")
    return cfg_path


@pytest.mark.skipif(not HAVE_PROMETHEUS, reason="prometheus not installed (Debian package; .ci/run installs it)")
def test_shifted_traffic_fires_the_alert_and_readapt_promotes_an_adapted_model(job):
    argv = [
        "--config",
        str(job),
        "--before",
        str(job.parent / "in-domain.jsonl"),
        "--after",
        BOOKS_POOL,
        "--before-texts",
        "240",
        "--after-texts",
        "240",
        "--prometheus",
        "--alert-for",
        "2s",
        "readapt.min_gain=-1",  # promote whatever the score, to follow the promotion through
        "data.max_eval_samples=100",
    ]
    assert drift_demo.main(argv) == 0
    cfg = load_config(job)
    report = json.loads((cfg.job_dir / "reports/drift-demo.json").read_text())
    assert report["score_before_shift"]["max"] < drift.DRIFT_THRESHOLD < report["score_after_shift"]["last"]
    assert 0 < report["crossed_after_shifted_texts"] <= 240
    assert report["alert_fired_after_shifted_texts"] is not None, "the real Prometheus fired DomainliftDrift"
    assert (cfg.job_dir / "reports/drift-demo.png").read_bytes()[:4] == b"\x89PNG"
    decision = report["readapt"]
    assert decision["captured_texts"] == 480 and decision["promoted"] is True
    served_ckpt = cfg.job_dir / "checkpoint"
    candidate_ckpt = manifest.read(decision["candidate"]["checkpoint"])
    assert candidate_ckpt["parent"]["sha256"] == manifest.read(served_ckpt)["sha256"], "adapted from the served model"
    assert candidate_ckpt["config"]["data"]["target_train_unlabeled"] is False, "the captured texts alone"
    # The next `make serve` serves the candidate, which is in the model store.
    assert served_variant(cfg) == cfg.job_dir.parent / decision["job"] / "export/onnx-fp32"
    assert bentoml.models.get(decision["candidate"]["tag"])
    assert json.loads((cfg.job_dir / "serve" / PROMOTED).read_text())["replaces"].endswith("export/onnx-fp32")


def test_a_candidate_under_the_gate_is_kept_but_not_served_and_too_little_traffic_is_refused(job, capsys):
    cfg = load_config(job)
    if not (cfg.job_dir / "reports/drift-demo/capture").is_dir():
        pytest.skip("needs the traffic captured by the test before it")
    capture = f"serve.capture.dir={cfg.job_dir / 'reports/drift-demo/capture'}"
    promoted_before = (cfg.job_dir / "serve" / PROMOTED).read_text()
    assert readapt_cli.main(["--config", str(job), capture, "readapt.min_gain=1.0", "data.max_eval_samples=100"]) == 1
    assert (cfg.job_dir / "serve" / PROMOTED).read_text() == promoted_before, "a rejected candidate is not served"
    rejected = max(cfg.job_dir.parent.glob("loop-readapt-*"), key=lambda d: int(d.name.rsplit("-", 1)[1]))
    decision = json.loads((rejected / "readapt.json").read_text())
    assert decision["promoted"] is False and (rejected / "export/onnx-fp32/manifest.json").is_file(), "kept"
    capsys.readouterr()
    assert readapt_cli.main(["--config", str(job), capture, "readapt.min_texts=100000"]) == 2
    assert "readapt needs at least 100000 (readapt.min_texts)" in capsys.readouterr().err


def test_a_candidate_that_did_not_come_from_the_served_model_cannot_be_promoted(job, tmp_path):
    from domainlift.errors import ManifestError
    from readapt.recipe import promote

    cfg = load_config(job)
    served = served_variant(cfg)
    stranger = load_config(job, [f"output_dir={tmp_path}", "job=stranger"])
    finetune(stranger)  # the same recipe from the base model, not from the served checkpoint
    Exporter(stranger).run(["onnx-fp32"])
    with pytest.raises(ManifestError, match="was not adapted from the served model's checkpoint"):
        promote(cfg, stranger.job_dir / "export/onnx-fp32", served, {"candidate": {}})
