"""The latency harness end to end on a tiny model with few repeats: the files and keys it documents.

GPU subjects are listed as skipped here (no CUDA on CI); on a GPU machine the same test times them too."""

import json
from pathlib import Path

import pytest
from conftest import write_easy_job

from benchmarks import latency
from domainlift.config import load_config
from export.recipe import Exporter
from finetune.recipe import run as finetune

FEW = ["bench.batch_sizes=[1,4]", "bench.fixed_lengths=[16]", "bench.seconds_per_cell=0.05", "bench.min_repeats=2"]


@pytest.fixture(scope="module")
def exported_job(tmp_path_factory, tiny_model_dir):
    cfg_path = write_easy_job(tmp_path_factory.mktemp("bench-job"), tiny_model_dir, export={"latency_samples": 5})
    cfg = load_config(cfg_path)
    finetune(cfg)
    Exporter(cfg).run(["onnx-fp32", "pruned-50"])  # an ONNX Runtime and a PyTorch variant
    return cfg_path


def test_latency_harness_writes_every_documented_file_and_key(exported_job):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = load_config(exported_job).job_dir / f"export/.onnx-fp32.tmp-{dead.pid}-x"  # an export killed mid-write
    leftover.mkdir()
    assert latency.main(["--config", str(exported_job), *FEW]) == 0
    assert not leftover.exists()
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
        assert r["accepted"] is None if r["name"] == "original" else isinstance(r["accepted"], bool)
    assert report["results"][0]["cells"]["len16 b4"]["mean_tokens"] == 16
    size = {r["label"]: r["size_mb"] for r in report["results"]}  # the weights a deployment ships
    assert 0 < size["pruned-50 [cpu]"] < size["onnx-fp32 [cpu]"]
    assert size["onnx-fp32 [cpu]"] == pytest.approx(size["original [cpu]"], rel=0.1)  # both fp32
    if not report["devices"]["torch_cuda"]:
        assert "original [cuda]: no CUDA GPU here" in report["skipped"]
    md = (reports / "latency.md").read_text()
    assert "| onnx-fp32 [cpu] |" in md and "1.00x" in md and "| size MB |" in md
    for png in ("latency_vs_batch.png", "accuracy_vs_latency.png"):
        assert (reports / png).read_bytes()[:4] == b"\x89PNG"


def test_a_variant_the_gate_rejected_is_never_on_the_pareto_front():
    # (p50 ms, test metric, accepted, label): a rejected student beats the checkpoint's test score, faster
    points = [(30.0, 0.9125, None, "original"), (5.4, 0.9250, False, "student"), (6.6, 0.9150, True, "int8"),
              (4.0, 0.8900, True, "pruned"), (8.0, 0.9100, True, "slower and worse")]  # fmt: skip
    assert [p[3] for p in latency.pareto_front(points)] == ["pruned", "int8"]


def test_random_weights_time_an_architecture_without_a_checkpoint(exported_job, tmp_path):
    assert latency.main(["--config", str(exported_job), "--random-weights", "--arch", "minilm", *FEW]) == 0
    report = json.loads((load_config(exported_job).job_dir / "reports/latency.json").read_text())
    assert report["random_weights"] == "minilm"
    assert [r["label"] for r in report["results"]][0] == "original [cpu]"
    assert report["plots"] == ["latency_vs_batch.png"]  # no accuracy without a checkpoint


def test_random_weights_need_no_config_and_take_overrides(tmp_path):
    assert latency.main(["--random-weights", f"output_dir={tmp_path}", *FEW, "bench.fixed_lengths=[]"]) == 0
    report = json.loads((tmp_path / "random-minilm/reports/latency.json").read_text())
    assert report["bench"]["batch_sizes"] == [1, 4] and report["random_weights"] == "minilm"
    assert set(report["results"][0]["cells"]) == {"natural b1", "natural b4"}
    assert "Fixed lengths" not in (tmp_path / "random-minilm/reports/latency.md").read_text()  # no empty table
    stand_in = Path(report["results"][0]["path"])
    assert stand_in.name == "checkpoint" and not stand_in.parent.exists(), "the stand-in is deleted after the run"


def test_compiled_runner_gives_the_eager_logits_at_any_length(tmp_path):
    # torch.compile compiles for symbolic shapes and pads lengths to a multiple of 32 (one CUDA graph per
    # bucket on a GPU; here on the CPU, no graphs): token logits must come back at the input's own width.
    import numpy as np
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from domainlift.runtime import TorchRunner

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertForTokenClassification(config).save_pretrained(tmp_path)
    eager, compiled = TorchRunner(tmp_path), TorchRunner(tmp_path, compiled=True)
    rng = np.random.default_rng(0)
    for batch, width in [(1, 7), (3, 33), (2, 64)]:
        ids = rng.integers(5, 500, size=(batch, width))
        mask = np.ones_like(ids)
        mask[0, width // 2 :] = 0
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids}
        want, got = eager(inputs), compiled(inputs)
        assert got.shape == (batch, width, 2)
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.skipif(not latency.cuda_devices()[0], reason="needs a CUDA GPU (CI has none)")
def test_the_gpu_subjects_are_timed_on_a_gpu(exported_job):
    assert latency.main(["--config", str(exported_job), *FEW]) == 0
    report = json.loads((load_config(exported_job).job_dir / "reports/latency.json").read_text())
    labels = {r["label"] for r in report["results"]}
    assert {"original [cuda]", "original fp16 [cuda]", "original fp16 compiled [cuda]"} <= labels
    gpu = [r for r in report["results"] if r["device"] == "cuda"]
    assert all(r["peak_gpu_allocated_mb"] > 0 for r in gpu)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    cfg_path = write_easy_job(tmp_path, tiny_model_dir)
    assert latency.main(["--config", str(cfg_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
