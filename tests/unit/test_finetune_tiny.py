"""The finetune stage end to end on a tiny random BERT: the checkpoint contract, LoRA, refusals, resume, 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CHECKPOINT_FILES, CROSSNER, ROOT, write_config
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from domainlift import manifest
from domainlift.config import ConfigError, load_config
from finetune.recipe import run


def _files(d: Path) -> set:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def test_full_finetune_writes_the_checkpoint_contract(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path, model={"path": str(tiny_model_dir)}))
    ckpt = run(cfg)
    assert ckpt == tmp_path / "artifacts" / "t" / "checkpoint"
    assert _files(ckpt) == CHECKPOINT_FILES
    m = manifest.verify(ckpt)
    assert m["kind"] == "checkpoint" and m["config"]["train"]["epochs"] == 1
    assert m["parent"]["sha256"] == manifest.parent_info(tiny_model_dir)["sha256"]
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["task"] == "text-classification" and metrics["method"] == "full"
    for split in ("source_dev", "target_test"):
        assert 0 <= metrics[split]["accuracy"] <= 1 and 0 <= metrics[split]["macro_f1"] <= 1
    assert metrics["train_runtime_s"] > 0 and metrics["train_samples_per_second"] > 0
    assert metrics["peak_memory_mb"]["cpu_rss"] > 0
    assert m["quality"]["target_test"] == metrics["target_test"]["accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert list((tmp_path / "artifacts" / "t").iterdir()) != []
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")], "no temporary dirs left behind"
    assert any((tmp_path / "artifacts/t/run/tensorboard").rglob("events.out.tfevents.*")), "TensorBoard logs"


def test_lora_checkpoint_is_merged_and_keeps_the_adapter(tmp_path, tiny_model_dir):
    cfg = load_config(
        write_config(
            tmp_path,
            model={"path": str(tiny_model_dir)},
            method={"name": "lora", "lora": {"r": 4, "target_modules": ["query", "value"]}},
            train={"epochs": 1, "learning_rate": 1e-3, "batch_size": 8},
        )
    )
    ckpt = run(cfg)
    assert _files(ckpt) >= CHECKPOINT_FILES | {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    weights = load_file(ckpt / "model.safetensors")
    assert not [k for k in weights if "lora" in k], "the saved model is plain: adapters merged"
    base = load_file(tiny_model_dir / "model.safetensors")
    q = "encoder.layer.0.attention.self.query.weight"
    k = "encoder.layer.0.attention.self.key.weight"
    assert not torch.equal(weights["bert." + q], base[q]), "merged query weights moved"
    assert torch.equal(weights["bert." + k], base[k]), "key had no adapter and stays frozen"
    manifest.verify(ckpt)


def test_ner_with_pretrain_phase(tmp_path, tiny_model_dir):
    cfg = load_config(
        write_config(
            tmp_path,
            model={"path": str(tiny_model_dir)},
            data={
                "task": "token-classification",
                "source": str(CROSSNER / "politics"),
                "target": str(CROSSNER / "politics"),
                "max_train_samples": 32,
                "max_eval_samples": 16,
            },
            pretrain={"data": str(CROSSNER / "conll2003"), "epochs": 1},
        )
    )
    ckpt = run(cfg)
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["main_metric"] == "f1" and 0 <= metrics["target_test"]["f1"] <= 1
    assert "per_type" in metrics["target_test"]
    model = AutoModelForTokenClassification.from_pretrained(ckpt)
    assert len(model.config.id2label) == 19, "the head has the politics tag set, not conll2003's"
    (encoder,) = (tmp_path / "artifacts/pretrain-cache").iterdir()
    assert manifest.verify(encoder)["kind"] == "pretrained-encoder"


def test_a_second_run_keeps_an_up_to_date_checkpoint_and_retrains_a_changed_one(tmp_path, tiny_model_dir, caplog):
    """The README's first command works twice: the same config and data reuse the checkpoint; a change retrains."""
    cfg_path = write_config(tmp_path, model={"path": str(tiny_model_dir)})
    ckpt = tmp_path / "artifacts/t/checkpoint"
    run(load_config(cfg_path))
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert run(load_config(cfg_path)) == ckpt
    assert "is up to date (same config and data): not fine-tuned again" in caplog.text
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == mtime
    with caplog.at_level("INFO"):
        run(load_config(cfg_path, ["train.learning_rate=1e-3"]))
    assert "fine-tuning again: config train changed" in caplog.text
    assert manifest.read(ckpt)["config"]["train"]["learning_rate"] == 1e-3
    mtime = (ckpt / "model.safetensors").stat().st_mtime_ns
    run(load_config(cfg_path, ["train.learning_rate=1e-3"]), overwrite=True)  # --overwrite retrains anyway
    assert (ckpt / "model.safetensors").stat().st_mtime_ns != mtime
    manifest.verify(ckpt)


def test_model_dir_without_weights(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in ("config.json", "vocab.txt", "tokenizer.json"):
        (broken / f).write_bytes((tiny_model_dir / f).read_bytes())
    cfg = load_config(write_config(tmp_path, model={"path": str(broken)}))
    with pytest.raises(ConfigError, match=r"lacks weights \(model.safetensors"):
        run(cfg)
    assert not (tmp_path / "artifacts").exists(), "nothing written before inputs are checked"


def _cli(cfg_path, *extra, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", "--config", str(cfg_path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_cli_reports_config_typos_cleanly(tmp_path):
    cfg = write_config(tmp_path)
    p = _cli(cfg, "train.epoch=1")
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "unknown config key train.epoch. Did you mean train.epochs?" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_saved_state(tmp_path, tiny_model_dir):
    # ~40 optimizer steps, state saved every 4: kill -9 right after the first save, then --resume.
    cfg = write_config(
        tmp_path,
        model={"path": str(tiny_model_dir)},
        data={"max_train_samples": 320, "max_eval_samples": 16},
        train={"epochs": 1, "batch_size": 8, "eval_steps": 4, "save_total_limit": 20, "early_stopping_patience": 0},
    )
    run_dir = tmp_path / "artifacts/t/run"
    p = _cli(cfg)
    deadline = time.time() + 240
    while not list(run_dir.glob("checkpoint-*/trainer_state.json")):
        assert p.poll() is None, "the run ended before it could be killed:\n" + p.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "artifacts/t/checkpoint").exists(), "a killed run leaves no checkpoint artifact"
    saved = sorted(
        int(c.name.split("-")[1]) for c in run_dir.glob("checkpoint-*") if (c / "trainer_state.json").exists()
    )
    assert saved and saved[-1] < 40

    p = _cli(cfg)  # without --resume the earlier state is not silently overwritten
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "pass --resume to continue" in out

    p = _cli(cfg, "--resume", "train.learning_rate=1e-3")  # resuming is for the same run, not a changed one
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "was started with another config or data (config train changed" in out

    p = _cli(cfg, "--resume")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert f"resuming from {run_dir}/checkpoint-{saved[-1]}" in out
    state = json.loads(
        sorted(run_dir.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))[-1]
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert state["global_step"] == 40
    steps_logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps_logged == sorted(set(steps_logged)), "resumed, not restarted: each step logged once"
    manifest.verify(tmp_path / "artifacts/t/checkpoint")


@pytest.mark.slow
def test_two_process_data_parallel_with_gloo(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path, model={"path": str(tiny_model_dir)}, data={"max_train_samples": 64})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "finetune",
        "--config",
        str(cfg),
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    metrics = json.loads((tmp_path / "artifacts/t/checkpoint/metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 64 examples, 8 per device, 2 devices: 4 optimizer steps (8 on one process).
    assert metrics["global_steps"] == 4
    manifest.verify(tmp_path / "artifacts/t/checkpoint")
