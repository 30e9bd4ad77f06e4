"""The latency harness end to end on a tiny model with few repeats: the files and keys it documents.

GPU subjects are listed as skipped here (no CUDA on CI); on a GPU machine the same test times them too."""

import json

import pytest
from conftest import write_easy_job

from benchmarks import latency
from domainlift.config import load_config
from export.stage import Exporter
from finetune.train import run as finetune

FEW = ["bench.batch_sizes=[1,4]", "bench.fixed_lengths=[16]", "bench.seconds_per_cell=0.05", "bench.min_repeats=2"]


@pytest.fixture(scope="module")
def exported_job(tmp_path_factory, tiny_model_dir):
    cfg_path = write_easy_job(tmp_path_factory.mktemp("bench-job"), tiny_model_dir, export={"latency_samples": 5})
    cfg = load_config(cfg_path)
    finetune(cfg)
    Exporter(cfg).run(["onnx-fp32", "pruned-50"])  # an ONNX Runtime and a PyTorch variant
    return cfg_path


def test_latency_harness_writes_every_documented_file_and_key(exported_job):
    assert latency.main(["--config", str(exported_job), *FEW]) == 0
    reports = load_config(exported_job).job_dir / "reports"
    report = json.loads((reports / "latency.json").read_text())
    labels = [r["label"] for r in report["results"]]
    assert labels[:3] == ["original [cpu]", "onnx-fp32 [cpu]", "pruned-50 [cpu]"]
    for r in report["results"]:
        assert set(r["cells"]) == {"natural b1", "len16 b1", "natural b4", "len16 b4"}
        for cell in r["cells"].values():
            assert cell["repeats"] >= 2 and 0 < cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"]
            assert cell["texts_per_s"] > 0
        assert r["peak_rss_mb"] > 0 and r["accuracy"] is not None
    assert report["results"][0]["cells"]["len16 b4"]["mean_tokens"] == 16
    if not report["devices"]["torch_cuda"]:
        assert "original [cuda]: no CUDA GPU here" in report["skipped"]
    md = (reports / "latency.md").read_text()
    assert "| onnx-fp32 [cpu] |" in md and "1.00x" in md
    for png in ("latency_vs_batch.png", "accuracy_vs_latency.png"):
        assert (reports / png).read_bytes()[:4] == b"\x89PNG"


def test_random_weights_time_an_architecture_without_a_checkpoint(exported_job, tmp_path):
    assert latency.main(["--config", str(exported_job), "--random-weights", "--arch", "minilm", *FEW]) == 0
    report = json.loads((load_config(exported_job).job_dir / "reports/latency.json").read_text())
    assert report["random_weights"] == "minilm"
    assert [r["label"] for r in report["results"]][0] == "original [cpu]"
    assert report["plots"] == ["latency_vs_batch.png"]  # no accuracy without a checkpoint


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    cfg_path = write_easy_job(tmp_path, tiny_model_dir)
    assert latency.main(["--config", str(cfg_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
