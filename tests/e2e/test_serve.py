"""The serving stage end to end: the real BentoML server on 127.0.0.1, real HTTP, tiny models really exported.

Two tiny models learn easy tasks first (a sentiment keyword; city names as locations), so that the answers
over HTTP can be checked, not only their shape. Each server is started the way a user starts it
(`python -m serve`, which imports the variant into the model store and execs `bentoml serve`).
"""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, write_config, write_easy_job

from benchmarks.server import running_server
from domainlift.config import load_config
from domainlift.manifest import ManifestError
from export.recipe import Exporter
from finetune.recipe import run as finetune
from serve.model_store import import_variant
from serve.predictor import Predictor

pytestmark = pytest.mark.slow  # starts real servers: in `make test`, not `make test-fast`
API_KEY = "test-key-5f1c"


def call(
    url: str,
    path: str,
    body=None,
    key: str | None = None,
    method: str = "POST",
    raw: bytes | None = None,
    content_type: str = "application/json",
):
    """(status, parsed JSON or text) for one HTTP request; 4xx/5xx are answers here, not exceptions."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    headers = {"content-type": content_type}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=data if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def serve_command(cfg_path, *overrides):
    return [sys.executable, "-m", "serve", "--config", str(cfg_path), *overrides]


@pytest.fixture(scope="module")
def sentiment_job(tmp_path_factory, tiny_model_dir):
    cfg_path = write_easy_job(
        tmp_path_factory.mktemp("serve-sentiment"),
        tiny_model_dir,
        job="tiny-sentiment",
        model={"max_length": 16},
        export={"variants": ["onnx-fp32"], "latency_samples": 5},
        serve={"max_texts": 8, "max_chars": 300, "max_latency_ms": 2000},
    )
    cfg = load_config(cfg_path)
    finetune(cfg)
    assert Exporter(cfg).run(["onnx-fp32"])["best"] == "onnx-fp32"
    return cfg_path


@pytest.fixture(scope="module")
def ner_job(tmp_path_factory, tiny_model_dir):
    cfg_path = write_easy_job(
        tmp_path_factory.mktemp("serve-ner"),
        tiny_model_dir,
        "token-classification",
        job="tiny-ner",
        model={"max_length": 24},
        export={"variants": ["onnx-fp32"], "latency_samples": 5},
        serve={"variant": "onnx-fp32", "long_text": "truncate", "max_chars": 60, "max_concurrency": 1},
    )
    cfg = load_config(cfg_path)
    finetune(cfg)
    Exporter(cfg).run(["onnx-fp32"])
    return cfg_path


@pytest.fixture(scope="module")
def sentiment_server(sentiment_job):
    with running_server(serve_command(sentiment_job), ROOT, sentiment_job.parent) as url:
        yield url


@pytest.fixture(scope="module")
def ner_server(ner_job):
    with running_server(serve_command(ner_job), ROOT, ner_job.parent, {"DOMAINLIFT_API_KEY": API_KEY}) as url:
        yield url


# ---- classification server (auth off) --------------------------------------------------------------


def test_classify_answers_with_the_learned_labels(sentiment_server):
    texts = ["the pan arrived excellent box", "terrible cup it works", "excellent"]
    status, out = call(sentiment_server, "/classify", {"texts": texts})
    assert status == 200 and len(out) == 3
    assert [r["label"] for r in out] == ["positive", "negative", "positive"]
    for r in out:
        assert set(r["scores"]) == {"negative", "positive"} and abs(sum(r["scores"].values()) - 1) < 1e-5
        assert r["score"] == max(r["scores"].values()) and r["truncated"] is False and r["tokens"] >= 3


def test_texts_over_max_length_tokens_are_flagged(sentiment_server):
    long = " ".join(["excellent kitchen cup"] * 10)  # 219 characters (limit 300), 32 tokens (max_length 16)
    status, out = call(sentiment_server, "/classify", {"texts": [long, "excellent"]})
    assert status == 200
    assert out[0]["truncated"] is True and out[0]["tokens"] == 16
    assert out[1]["truncated"] is False


def test_model_info_names_the_served_variant(sentiment_server, sentiment_job):
    status, info = call(sentiment_server, "/model", {})
    assert status == 200
    variant = load_config(sentiment_job).job_dir / "export/onnx-fp32"
    m = json.loads((variant / "manifest.json").read_text())
    assert info["job"] == "tiny-sentiment" and info["variant"] == "onnx-fp32" and info["task"] == "text-classification"
    assert info["sha256"] == m["sha256"] and info["parent_sha256"] == m["parent"]["sha256"]
    assert info["ratio_to_checkpoint"] == m["quality"]["ratio"] and info["score"] == m["quality"]["accuracy"]


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"{not json", "Invalid JSON"),
        (b"{}", "texts"),  # missing
        (json.dumps({"texts": "one string"}).encode(), "valid array"),
        (json.dumps({"texts": ["ok", 7]}).encode(), "valid string"),
        (json.dumps({"texts": []}).encode(), "texts is empty"),
        (json.dumps({"texts": ["x"] * 9}).encode(), "serve.max_texts"),
        (json.dumps({"texts": ["x" * 301]}).encode(), "serve.max_chars"),
        ('{"texts": ["caf\xe9"]}'.encode("latin-1"), "Invalid JSON"),  # not UTF-8
    ],
    ids=["invalid-json", "missing-texts", "not-a-list", "non-string", "empty", "too-many", "too-long", "non-utf8"],
)
def test_bad_input_is_a_clear_400_and_the_server_keeps_serving(sentiment_server, raw, needle):
    status, out = call(sentiment_server, "/classify", raw=raw)
    assert status == 400 and needle in json.dumps(out), out
    assert call(sentiment_server, "/classify", {"texts": ["excellent"]})[0] == 200


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/plain"],
)
def test_a_body_that_is_not_json_is_a_clear_415(sentiment_server, content_type):
    """A multipart type without its boundary crashed BentoML's form parser (500, found by schemathesis in CI)."""
    status, out = call(sentiment_server, "/classify", {"texts": ["excellent"]}, content_type=content_type)
    assert status == 415 and "Content-Type: application/json" in out["detail"], (status, out)
    with_charset = "application/json; charset=utf-8"
    assert call(sentiment_server, "/classify", {"texts": ["excellent"]}, content_type=with_charset)[0] == 200


def test_the_other_task_api_is_a_clear_404(sentiment_server):
    status, out = call(sentiment_server, "/extract_entities", {"texts": ["Paris"]})
    assert status == 404 and "/classify" in json.dumps(out)


def test_concurrent_requests_are_batched_and_metrics_are_exported(sentiment_server):
    def one(i):
        return call(sentiment_server, "/classify", {"texts": [f"excellent cup {i}", "terrible pan"]})[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert set(pool.map(one, range(64))) == {200}
    status, text = call(sentiment_server, "/metrics", method="GET")
    assert status == 200
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    # BentoML's own histogram of requests merged per model call: some call merged more than one request.
    batch_1 = [
        line for line in lines if "adaptive_batch_size_bucket" in line and 'le="1.0"' in line and "classify" in line
    ]
    total = [line for line in lines if "adaptive_batch_size_count" in line and "classify" in line]
    assert float(total[0].split()[-1]) > float(batch_1[0].split()[-1]), "no batch held more than one request"
    assert any(line.startswith('domainlift_predictions_total{label="positive"}') for line in lines)
    assert any(line.startswith("domainlift_confidence_bucket") for line in lines)
    assert any(line.startswith("domainlift_input_tokens_bucket") for line in lines)


def test_locust_loadtest_runs_headless_and_judges_the_run(sentiment_server, sentiment_job):
    from benchmarks import loadtest

    bounded = ["loadtest.users=4", "loadtest.spawn_rate=4", "loadtest.run_time_s=3"]
    assert loadtest.main(["--config", str(sentiment_job), "--url", sentiment_server, *bounded]) == 0
    reports = load_config(sentiment_job).job_dir / "reports"
    summary = json.loads((reports / "loadtest.json").read_text())
    assert summary["passed"] and summary["failures"] == 0 and summary["requests"] > 0
    assert summary["texts_per_s"] > summary["requests_per_s"] > 0  # 1-8 texts per request
    assert summary["server_memory_mb"] > 50, "the server's resident memory, all its processes"
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    assert (reports / "loadtest.html").is_file() and (reports / "loadtest_stats.csv").is_file()
    # the same run against an impossible p99 bound fails, and says so
    assert (
        loadtest.main(
            ["--config", str(sentiment_job), "--url", sentiment_server, *bounded, "loadtest.max_p99_ms=0.001"]
        )
        == 1
    )
    assert json.loads((reports / "loadtest.json").read_text())["passed"] is False


def test_bench_serve_compares_three_real_services(sentiment_job):
    """(a) batching, (b) no batching, (c) the naive pipeline service: each started, load-tested and stopped."""
    from benchmarks import bench_serve

    bounded = ["loadtest.users=4", "loadtest.spawn_rate=4", "loadtest.run_time_s=3"]
    assert bench_serve.main(["--config", str(sentiment_job), *bounded]) == 0
    reports = load_config(sentiment_job).job_dir / "reports"
    results = json.loads((reports / "bench-serve.json").read_text())["results"]
    assert set(results) == {"a", "b", "c"} and results["a"]["variant"] == "onnx-fp32"
    assert all(r["failures"] == 0 and r["texts_per_s"] > 0 for r in results.values())
    assert "(a) / (c):" in (reports / "bench-serve.md").read_text()


# ---- NER server (auth on, long texts truncated, at most 1 request in flight) ------------------------


def test_auth_is_required_except_for_health_probes(ner_server):
    texts = {"texts": ["I flew to Paris"]}
    assert call(ner_server, "/extract_entities", texts)[0] == 401
    status, out = call(ner_server, "/extract_entities", texts, key="wrong")
    assert status == 401 and "Authorization: Bearer" in out["detail"]
    assert call(ner_server, "/metrics", method="GET")[0] == 401
    assert call(ner_server, "/livez", method="GET")[0] == 200 and call(ner_server, "/readyz", method="GET")[0] == 200
    assert call(ner_server, "/extract_entities", texts, key=API_KEY)[0] == 200


def test_entities_carry_character_offsets_into_the_original_text(ner_server):
    texts = ["the box arrived in Paris", "it works in New York kitchen", "the cup thing"]
    status, out = call(ner_server, "/extract_entities", {"texts": texts}, key=API_KEY)
    assert status == 200 and len(out) == 3
    for text, result in zip(texts, out):
        for e in result["entities"]:
            assert text[e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
    assert [(e["type"], e["text"]) for e in out[0]["entities"]] == [("location", "Paris")]
    assert [(e["type"], e["text"]) for e in out[1]["entities"]] == [("location", "New York")]
    assert out[2]["entities"] == []


def test_long_text_is_truncated_with_a_flag_when_so_configured(ner_server):
    text = "the box " * 20 + "Paris"  # 165 characters, serve.max_chars is 60: Paris is cut off
    status, out = call(ner_server, "/extract_entities", {"texts": [text, "Paris"]}, key=API_KEY)
    assert status == 200
    assert out[0]["truncated"] is True and out[0]["entities"] == []
    assert out[1]["truncated"] is False


def test_overload_answers_503_not_a_hang(ner_server):
    def one(_):
        return call(ner_server, "/extract_entities", {"texts": ["the box arrived in Paris"] * 8}, key=API_KEY)

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(48)))
    statuses = {s for s, _ in answers}
    assert statuses <= {200, 503} and 503 in statuses and 200 in statuses
    assert "serve.max_concurrency" in next(out["detail"] for s, out in answers if s == 503)
    assert call(ner_server, "/extract_entities", {"texts": ["Paris"]}, key=API_KEY)[0] == 200


# ---- model store and artifacts -----------------------------------------------------------------------


def test_reimporting_the_same_artifact_is_a_no_op(sentiment_job):
    import bentoml

    variant = load_config(sentiment_job).job_dir / "export/onnx-fp32"
    tag = import_variant(variant)
    assert import_variant(variant) == tag
    assert len(bentoml.models.list("tiny-sentiment")) == 1


def test_an_artifact_that_fails_its_hashes_is_refused(sentiment_job, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(load_config(sentiment_job).job_dir / "export/onnx-fp32", tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="model.onnx does not match"):
        import_variant(tampered)
    with pytest.raises(ManifestError, match="model.onnx does not match"):
        Predictor(tampered)


def test_micro_batches_follow_the_device_and_give_the_same_answers(sentiment_job, monkeypatch):
    """On a CPU one text per model call; on a GPU the whole batch in one. No GPU here: the GPU case is the same
    ONNX Runtime session on the CPU with its device label set to "cuda", which is all the predictor reads."""
    import serve.predictor as predictor_module

    root = load_config(sentiment_job).job_dir / "export/onnx-fp32"
    texts = ["a kettle that boils fast and pours without a drip, well made", "ok", "broke after a week"]

    def answers(predictor):
        calls, run = [], predictor.runner
        predictor.runner = lambda batch: calls.append(len(batch["input_ids"])) or run(batch)
        return [r["scores"] for r in predictor.classify(texts)], calls

    on_cpu, cpu_calls = answers(Predictor(root, threads=1))
    load = predictor_module.load_runner

    def load_on_gpu(*args, **kwargs):
        runner = load(*args, **kwargs)
        runner.device = "cuda"
        return runner

    monkeypatch.setattr(predictor_module, "load_runner", load_on_gpu)
    on_gpu, gpu_calls = answers(Predictor(root, threads=1))
    assert cpu_calls == [1, 1, 1] and gpu_calls == [3]
    for a, b in zip(on_cpu, on_gpu):  # padding is masked: the same probabilities to float precision
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)


def test_large_batches_run_on_a_pool_of_one_thread_calls_with_the_same_answers(sentiment_job):
    """With 2 threads, a batch of POOL_FROM texts per thread runs one text per call on a one-thread session from
    two pool threads at once; a smaller batch runs on the two-thread session. Answers match a one-thread predictor."""
    import threading

    from serve.predictor import POOL_FROM

    root = load_config(sentiment_job).job_dir / "export/onnx-fp32"
    texts = [f"review {i}: " + "the lid fits and the handle stays cool " * (i % 5 + 1) for i in range(POOL_FROM * 2)]
    predictor = Predictor(root, threads=2)
    calls = []

    def counted(run, session):
        return lambda batch: calls.append((session, threading.current_thread().name)) or run(batch)

    predictor.runner = counted(predictor.runner, "two threads")
    predictor.one_thread = counted(predictor.one_thread, "one thread")
    large = predictor.classify(texts)
    assert len(calls) == len(texts) and {session for session, _ in calls} == {"one thread"}
    assert all(name.startswith("onnx") for _, name in calls)  # from the pool, not the caller's thread
    calls.clear()
    predictor.classify(texts[:3])
    assert [session for session, _ in calls] == ["two threads"] * 3
    reference = Predictor(root, threads=1).classify(texts)
    for a, b in zip(large, reference):
        assert a["label"] == b["label"] and all(abs(a["scores"][k] - b["scores"][k]) < 1e-5 for k in a["scores"])


def test_a_torch_variant_runs_through_the_same_predictor(ner_job):
    """The PyTorch backend (pruned-* and bitsandbytes variants) behind the same interface, in-process."""
    cfg = load_config(ner_job)
    Exporter(cfg).run(["pruned-50"])
    predictor = Predictor(cfg.job_dir / "export/pruned-50", threads=1, micro_batch_size=2)
    assert predictor.runner.runtime == "torch"
    texts = ["the box arrived in Paris", "New York", "it works"]
    out = predictor.extract_entities(texts)
    assert len(out) == 3 and all(r["truncated"] is False for r in out)
    for text, result in zip(texts, out):
        assert all(text[e["start"] : e["end"]] == e["text"] for e in result["entities"])


def test_serving_without_an_export_says_what_to_run(tmp_path):
    cfg_path = write_config(tmp_path, job="never-exported")
    proc = subprocess.run(serve_command(cfg_path), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "make export JOB=never-exported" in proc.stderr


def test_loadtest_without_an_export_says_what_to_run(tmp_path, capsys):
    from benchmarks import loadtest

    cfg_path = write_config(tmp_path, job="never-exported")
    assert loadtest.main(["--config", str(cfg_path)]) == 2
    assert "make export JOB=never-exported" in capsys.readouterr().err


@pytest.mark.slow
def test_a_built_bento_serves_with_nothing_but_itself(sentiment_job, tmp_path):
    """bentoml build -> bentoml export -> a fresh store elsewhere: no repo artifacts, no original model store."""
    build = subprocess.run([*serve_command(sentiment_job), "--build"], capture_output=True, text=True, cwd=ROOT)
    assert build.returncode == 0, build.stdout + build.stderr
    bento_file = tmp_path / "domainlift.bento"
    subprocess.run(
        [sys.executable, "-m", "bentoml", "export", "domainlift:latest", str(bento_file)], check=True, cwd=ROOT
    )
    fresh = {"BENTOML_HOME": str(tmp_path / "fresh-home")}
    env = {**os.environ, **fresh}
    subprocess.run([sys.executable, "-m", "bentoml", "import", str(bento_file)], check=True, env=env, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "bentoml", "serve", "domainlift:latest", "--host", "127.0.0.1"]
    with running_server(command, elsewhere, tmp_path, fresh) as url:
        status, out = call(url, "/classify", {"texts": ["excellent pan", "terrible pan"]})
        assert status == 200 and [r["label"] for r in out] == ["positive", "negative"]
        info = call(url, "/model", {})[1]
        assert info["job"] == "tiny-sentiment" and info["variant"] == "onnx-fp32"
