"""The export stage on a tiny random BERT fine-tuned on an easy synthetic task (so accuracy means something)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import ROOT, write_config, write_easy_job

from domainlift import manifest
from domainlift.config import ConfigError, load_config
from domainlift.errors import DataError
from domainlift.runtime import OnnxRunner, load_runner
from export import build, student
from export.recipe import Exporter
from export.student import spread_layers
from export.variants import parse as parse_variant
from finetune.recipe import run as finetune


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model_dir):
    cfg_path = write_easy_job(
        tmp_path_factory.mktemp("export-job"),
        tiny_model_dir,
        export={"variants": ["onnx-fp32", "onnx-int8-dynamic"], "latency_samples": 10, "prune_recovery_epochs": 1},
    )
    cfg = load_config(cfg_path)
    finetune(cfg)
    acc = json.loads((cfg.job_dir / "checkpoint/metrics.json").read_text())["target_test"]["accuracy"]
    assert acc >= 0.9, f"the tiny model should learn the keyword task, got {acc}"
    return cfg_path


def test_every_cpu_variant_builds_verifies_and_loads(job):
    cfg = load_config(job)
    variants = [
        "onnx-fp32",
        "onnx-int8-dynamic",
        "onnx-int8-static",
        "onnx-int4",
        "pruned-50",
        "pruned-50-onnx-int8-dynamic",
        "onnx-fp16",
        "torch-int8",
        "torch-nf4",
    ]
    report = Exporter(cfg).run(variants)
    rows = {r["variant"]: r for r in report["rows"]}
    out = cfg.job_dir / "export"
    for name in ("onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static", "onnx-int4", "pruned-50-onnx-int8-dynamic"):
        m = manifest.verify(out / name)
        assert m["parent"]["sha256"] == manifest.read(cfg.job_dir / "checkpoint")["sha256"]
        assert m["recipe"]["variant"] == name and "accepted" in m["quality"]
        runner = OnnxRunner(out / name)  # a fresh ONNX Runtime session
        logits = runner(
            {
                "input_ids": np.array([[101, 2023, 102]]),
                "attention_mask": np.ones((1, 3)),
                "token_type_ids": np.zeros((1, 3)),
            }
        )
        assert logits.shape == (1, 2) and np.isfinite(logits).all()
    assert rows["onnx-fp32"]["max_abs_dlogit"] < 1e-4 and rows["onnx-fp32"]["agreement"] == 1.0
    # GPU-only variants are skipped here with a reason, not failed
    for name in ("onnx-fp16", "torch-int8", "torch-nf4"):
        assert rows[name]["status"] == "skipped" and ("GPU" in rows[name]["reason"] or "CUDA" in rows[name]["reason"])
    ops = {n.op_type for n in onnx.load(str(out / "onnx-int4/model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    ops = {n.op_type for n in onnx.load(str(out / "onnx-int8-dynamic/model.onnx")).graph.node}
    assert "QAttention" in ops or "MatMulInteger" in ops, ops
    ops = {n.op_type for n in onnx.load(str(out / "onnx-int8-static/model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert rows["onnx-int8-dynamic"]["size_bytes"] < 0.5 * rows["onnx-fp32"]["size_bytes"]
    # report + best
    assert (out / "report.md").is_file() and json.loads((out / "report.json").read_text())["best"] == report["best"]
    assert (out / "best").is_symlink() and (out / "best").resolve().parent == out.resolve()
    assert rows[report["best"]]["status"] == "accepted"


def test_pruning_really_shrinks_the_matrices(job):
    cfg = load_config(job)
    Exporter(cfg).run(["pruned-50"])
    d = cfg.job_dir / "export/pruned-50"
    runner = load_runner(d)
    model = runner.model
    layer0 = model.bert.encoder.layer[0]
    assert model.config.intermediate_size == 32  # 64 FFN neurons -> 32
    assert layer0.intermediate.dense.weight.shape == (32, 32)
    assert layer0.output.dense.weight.shape == (32, 32)
    heads = sum(layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer)
    assert heads == 2, "4 heads, 50% pruned, at least one kept per layer"
    assert (
        json.loads((d / "pruning.json").read_text())["parameters"][1]
        < json.loads((d / "pruning.json").read_text())["parameters"][0]
    )


def test_whole_layers_are_removed_and_the_rest_distils_from_the_layers_they_came_from(job):
    import shutil

    cfg = load_config(job, ["job=layers", "export.prune_layers=1", "export.prune_hidden_weight=1.0"])
    shutil.copytree(load_config(job).job_dir / "checkpoint", cfg.job_dir / "checkpoint", dirs_exist_ok=True)
    report = Exporter(cfg).run(["pruned-50"])
    assert report["rows"][1]["status"] in ("accepted", "rejected")
    d = cfg.job_dir / "export/pruned-50"
    model = load_runner(d).model  # a plain Hugging Face model again: the saved config has one layer
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    info = json.loads((d / "pruning.json").read_text())
    assert len(info["layers_kept"]) == 1 and info["parameters"][1] < info["parameters"][0]
    assert manifest.read(d)["recipe"]["prune"]["layers_removed"] == 1
    with pytest.raises(ConfigError, match="remove at most 1"):
        Exporter(load_config(job, ["job=layers", "export.prune_layers=2"])).run(["pruned-50"])


def test_a_student_distils_into_fewer_layers_on_unlabeled_text_and_never_sees_the_held_out_texts(job, monkeypatch):
    cfg = load_config(job)
    exporter = Exporter(cfg, force=True)
    seen = {}
    original = student.student_model

    def spy(ckpt, cfg, texts, tokenizer, out, layers):
        seen["texts"] = set(tokenizer.batch_decode(texts["input_ids"], skip_special_tokens=True))
        assert "labels" not in texts.column_names, "the student learns from the teacher, not from labels"
        return original(ckpt, cfg, texts, tokenizer, out, layers)

    monkeypatch.setattr(student, "student_model", spy)
    report = exporter.run(["student-1-onnx-int8-dynamic", "student-1"])
    rows = {r["variant"]: r for r in report["rows"]}
    assert rows["student-1-onnx-int8-dynamic"]["status"] in ("accepted", "rejected")
    d = cfg.job_dir / "export/student-1"
    model = load_runner(d).model
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    info = json.loads((d / "student.json").read_text())
    assert info["teacher_layers_kept"] == [1], "the last of the teacher's 2 layers"
    assert info["parameters"][1] < info["parameters"][0]
    assert manifest.read(d)["recipe"]["steps"] == ["student"]
    held = set(exporter.tokenizer.batch_decode(exporter.encode(exporter.held_out, "x")["input_ids"],
                                               skip_special_tokens=True))  # fmt: skip
    assert held and not held & seen["texts"], "held-out texts measure agreement; the student never learns them"
    assert 0 < len(exporter.held_out) <= len(exporter.pool), "at most half is held out: texts remain to distil on"
    train = set(exporter.tokenizer.batch_decode(exporter.encode(exporter.splits.train, "x")["input_ids"],
                                                skip_special_tokens=True))  # fmt: skip
    assert train <= seen["texts"], "every source training text is distilled on"
    for name in ("student-1-onnx-int8-dynamic", "student-1"):
        q = manifest.read(cfg.job_dir / "export" / name)["quality"]
        assert q["unlabeled_texts"] == len(held) and 0 <= q["unlabeled_agreement"] <= 1
        assert q["ratio_ci95"][0] <= q["ratio"] <= q["ratio_ci95"][1]
    with pytest.raises(ConfigError, match="a student needs fewer layers than the checkpoint's 2"):
        Exporter(cfg).run(["student-2-onnx-fp32"])


def test_more_distillation_text_joins_the_students_but_never_a_test_or_held_out_text(
    job, monkeypatch, tmp_path, caplog
):
    plain = Exporter(load_config(job))
    test_text, held_text = plain.splits.test[0]["text"], plain.held_out[0]["text"]
    shutil.rmtree(plain.work)  # built only to read its splits; run() is what cleans up otherwise
    more = tmp_path / "more.txt"
    more.write_text("\n".join(["a new review of a kettle", "a new review of a toaster", test_text, held_text]) + "\n")
    sizes = []
    original = student.student_model

    def spy(ckpt, cfg, texts, *rest):
        sizes.append(len(texts))
        return original(ckpt, cfg, texts, *rest)

    monkeypatch.setattr(student, "student_model", spy)
    Exporter(load_config(job), force=True).run(["student-1"])
    cfg = load_config(job, [f"export.student_unlabeled=[{more}]"])
    Exporter(cfg).run(["student-1"])  # not forced: the recipe changed, so the student is built again
    assert sizes[1] == sizes[0] + 2, "the two new texts join; the test and the held-out text are dropped"
    assert "1 examples that also occur in the test set" in caplog.text
    assert "1 examples that also occur in the held-out agreement texts" in caplog.text
    recipe = manifest.read(cfg.job_dir / "export/student-1")["recipe"]["student"]
    assert recipe["more_texts"] == [str(more)], "a changed text list rebuilds the student"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match=f"export.student_unlabeled: {empty} is empty"):
        Exporter(load_config(job, [f"export.student_unlabeled=[{empty}]"]))


def test_the_student_loss_settings_reach_the_distillation_trainer_and_are_checked(job, monkeypatch):
    from export import distill

    used = []
    original = distill.DistillTrainer.__init__

    def spy(self, *args, temperature=2.0, hard_weight=0.0, word_dropout=0.0, **kwargs):
        used.append((temperature, hard_weight, word_dropout))
        original(self, *args, temperature=temperature, hard_weight=hard_weight, word_dropout=word_dropout, **kwargs)

    monkeypatch.setattr(distill.DistillTrainer, "__init__", spy)
    settings = ["export.student_temperature=1", "export.student_hard_weight=0.5", "export.student_word_dropout=0.1"]
    cfg = load_config(job, settings)
    Exporter(cfg).run(["student-1"])  # not forced: new loss settings are a new recipe, so the student is rebuilt
    assert used == [(1.0, 0.5, 0.1)]
    recipe = manifest.read(cfg.job_dir / "export/student-1")["recipe"]["student"]
    assert (recipe["temperature"], recipe["hard_weight"], recipe["word_dropout"]) == (1.0, 0.5, 0.1)
    with pytest.raises(ConfigError, match="export.student_temperature is 0.0; use a positive number"):
        load_config(job, ["export.student_temperature=0"])
    with pytest.raises(ConfigError, match="export.student_hard_weight is -1.0; use 0"):
        load_config(job, ["export.student_hard_weight=-1"])
    with pytest.raises(ConfigError, match=r"export.student_word_dropout is 1.0; use a probability in \[0, 1\)"):
        load_config(job, ["export.student_word_dropout=1"])
    with pytest.raises(ConfigError, match=r"export.student_word_dropout is -0.1; use a probability in \[0, 1\)"):
        load_config(job, ["export.student_word_dropout=-0.1"])


def test_compare_measures_another_model_against_the_checkpoint_as_the_gate_does(job, capsys, tmp_path):
    from export.__main__ import main

    cfg = load_config(job)
    row = next(r for r in Exporter(cfg).run(["student-1"])["rows"] if r["variant"] == "student-1")
    q = Exporter(cfg).compare(cfg.job_dir / "export/student-1")
    assert (q["agreement"], q["unlabeled_agreement"]) == (row["agreement"], row["unlabeled_agreement"])
    assert Exporter(cfg).compare(cfg.job_dir / "checkpoint")["unlabeled_agreement"] == 1.0
    assert main(["--config", str(job), "--compare", str(cfg.job_dir / "export/student-1")]) == 0
    assert f"on held-out target texts {row['unlabeled_agreement']:.4f} of {row['unlabeled_texts']}" in (
        capsys.readouterr().out
    )
    assert main(["--config", str(job), "--compare", str(tmp_path)]) == 2
    assert "no model there (no config.json)" in capsys.readouterr().err
    relabelled = shutil.copytree(cfg.job_dir / "checkpoint", tmp_path / "relabelled")
    config = json.loads((relabelled / "config.json").read_text())
    config["id2label"] = {"0": "good", "1": "bad"}
    (relabelled / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="are not the checkpoint's"):
        Exporter(cfg).compare(relabelled)


def test_variant_names_compose_student_pruning_and_base(job):
    cfg = load_config(job)
    v = parse_variant("student-3-pruned-20-onnx-int8-dynamic", cfg)
    assert (v.student_layers, v.prune_pct, v.base) == (3, 20, "onnx-int8-dynamic")
    assert v.recipe["steps"][:2] == ["student", "prune"] and v.recipe["prune"]["layers_removed"] == 0
    assert parse_variant("student-2", cfg).base is None
    for bad in ("student-x", "student-3-", "student-0-onnx-fp32", ""):
        with pytest.raises(ConfigError):
            parse_variant(bad, cfg)


def test_a_new_training_seed_is_a_new_recipe_for_every_trained_variant():
    # Same recipe and parent = reuse; a student or pruned model trained with another train.seed must not be reused.
    base, reseeded = load_config(None, ["job=t"]), load_config(None, ["job=t", "train.seed=7"])
    for name in ("student-2-onnx-fp32", "pruned-20-onnx-fp32"):
        assert parse_variant(name, base).recipe != parse_variant(name, reseeded).recipe, name
    assert parse_variant("onnx-fp32", base).recipe == parse_variant("onnx-fp32", reseeded).recipe


def test_a_student_trained_in_another_precision_is_a_new_recipe(monkeypatch):
    # precision "auto" is fp32 on a CPU and bf16 on a GPU: the recipe records what it resolved to, not "auto".
    cfg = load_config(None, ["job=t"])
    assert cfg.train.precision == "auto"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    on_cpu = parse_variant("student-2-onnx-fp32", cfg).recipe
    assert on_cpu == parse_variant("student-2-onnx-fp32", load_config(None, ["job=t", "train.precision=fp32"])).recipe
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # stands in for a GPU, which CI has not
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    assert parse_variant("student-2-onnx-fp32", cfg).recipe != on_cpu


def test_student_layers_are_spread_with_the_last_kept():
    assert spread_layers(6, 3) == [1, 3, 5]
    assert spread_layers(6, 2) == [2, 5]
    assert spread_layers(12, 4) == [2, 5, 8, 11]
    assert spread_layers(6, 1) == [5]


def test_the_distillation_teacher_goes_where_the_student_trains(tmp_path, tiny_model_dir):
    """Was a crash on GPUs: the teacher stayed on the CPU. Here a spy records where it is sent; the GPU test below
    runs a real step on CUDA."""
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from export.distill import DistillTrainer

    sent = []
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    original_to = teacher.to
    teacher.to = lambda device: sent.append(device) or original_to(device)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    DistillTrainer(model=AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), args=args,
                   teacher=teacher, kept_layers=[0, 1])  # fmt: skip
    assert sent == [args.device]


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_the_hard_label_loss_is_cross_entropy_on_the_teachers_answers(tmp_path, tiny_model_dir, head):
    """export.student_hard_weight adds CE(student logits, teacher argmax), over real tokens for token tasks."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, TrainingArguments

    from export.distill import DistillTrainer

    model_class = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[head]
    torch.manual_seed(0)  # two different random heads, so the student and the teacher disagree somewhere
    student, teacher = model_class.from_pretrained(tiny_model_dir), model_class.from_pretrained(tiny_model_dir)
    inputs = {"input_ids": torch.randint(1000, 2000, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    inputs["attention_mask"][1, 3:] = 0
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)

    def loss(hard_weight):
        trainer = DistillTrainer(model=student, args=args, teacher=teacher, kept_layers=[0, 1], task_weight=0.0,
                                 hard_weight=hard_weight)  # fmt: skip
        with torch.no_grad():
            return trainer.compute_loss(student, dict(inputs))

    with torch.no_grad():
        s, t = student(**inputs).logits, teacher(**inputs).logits
    ce = F.cross_entropy(s.transpose(1, -1), t.argmax(-1), reduction="none")
    expected = ce[inputs["attention_mask"].bool()].mean() if head == "token" else ce.mean()
    assert (s.argmax(-1) != t.argmax(-1)).any(), "the check needs a disagreement to be worth anything"
    torch.testing.assert_close(loss(0.5) - loss(0.0), 0.5 * expected)


def test_word_dropout_gives_teacher_and_student_the_same_noisy_text_in_half_the_rows(tmp_path, tiny_model_dir):
    """export.student_word_dropout: while training, about half the rows lose ordinary tokens (never [CLS]/[SEP] or
    padding), the teacher sees exactly the student's input, and evaluation leaves the input alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from export.distill import DistillTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    student = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    seen = {}
    for name, m in (("student", student), ("teacher", teacher)):
        m.register_forward_pre_hook(lambda _, a, kw, name=name: seen.__setitem__(name, kw["attention_mask"].clone()),
                                    with_kwargs=True)  # fmt: skip
    texts = ["a fine kettle that boils water fast and keeps it hot for hours"] * 200 + ["ok"] * 56
    inputs = dict(tok(texts, padding=True, return_tensors="pt"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillTrainer(model=student, args=args, processing_class=tok, teacher=teacher, kept_layers=[0, 1],
                             task_weight=0.0, word_dropout=0.5)  # fmt: skip
    student.train()
    torch.manual_seed(0)
    with torch.no_grad():
        trainer.compute_loss(student, dict(inputs))
    mask, noisy = inputs["attention_mask"], seen["student"]
    assert torch.equal(seen["teacher"], noisy), "both models see the same noisy text"
    special = torch.isin(inputs["input_ids"], torch.tensor(tok.all_special_ids))
    assert torch.equal(noisy[special], mask[special]), "[CLS], [SEP] and padding untouched"
    changed = (noisy != mask).any(-1)
    assert 70 < changed[:200].sum() < 130, "about half of the long texts lose tokens"
    hidden = (mask - noisy)[:200][changed[:200]].sum() / mask[:200][changed[:200]].sum()
    assert 0.35 < hidden < 0.55, "and those lose about p of their tokens (p = 0.5; [CLS]/[SEP] never)"
    student.eval()
    with torch.no_grad():
        trainer.compute_loss(student, dict(inputs))
    assert torch.equal(seen["student"], mask) and torch.equal(seen["teacher"], mask), "no noise outside training"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_distillation_runs_on_a_gpu(job):
    cfg = load_config(job)
    report = Exporter(cfg, force=True).run(["student-1"])
    assert report["rows"][1]["status"] in ("accepted", "rejected")


def test_rerun_is_idempotent_and_force_rebuilds(job):
    cfg = load_config(job)
    Exporter(cfg).run(["onnx-fp32"])
    first = manifest.read(cfg.job_dir / "export/onnx-fp32")["created"]
    mtime = (cfg.job_dir / "export/onnx-fp32/model.onnx").stat().st_mtime_ns
    Exporter(cfg).run(["onnx-fp32"])
    assert (cfg.job_dir / "export/onnx-fp32/model.onnx").stat().st_mtime_ns == mtime, "up to date: not rebuilt"
    Exporter(cfg, force=True).run(["onnx-fp32"])
    assert (cfg.job_dir / "export/onnx-fp32/model.onnx").stat().st_mtime_ns != mtime
    assert manifest.read(cfg.job_dir / "export/onnx-fp32")["created"] >= first


def first_class_only(optimize):
    """build.optimize that also adds a large score to the first class: the variant predicts it for every text (a
    broken variant, right only on that class's share of the test set, so its ratio lies between 0 and 1)."""

    def broken_optimize(src, dst, **kw):
        optimize(src, dst, **kw)
        model = onnx.load(str(dst))
        producer = next(n for n in model.graph.node if "logits" in n.output)
        producer.output[list(producer.output).index("logits")] = "logits_raw"
        bias = onnx.helper.make_tensor("first_class_bias", onnx.TensorProto.FLOAT, [2], [1e4, 0.0])
        model.graph.initializer.append(bias)
        model.graph.node.append(onnx.helper.make_node("Add", ["logits_raw", "first_class_bias"], ["logits"]))
        onnx.save(model, str(dst))

    return broken_optimize


def test_gate_rejects_a_broken_variant(job, monkeypatch):
    """A variant that predicts one class for every text: the gate must reject it."""
    cfg = load_config(job)
    monkeypatch.setattr(build, "optimize", first_class_only(build.optimize))
    report = Exporter(cfg, force=True).run(["onnx-fp32"])
    row = next(r for r in report["rows"] if r["variant"] == "onnx-fp32")
    assert row["status"] == "rejected" and 0 < row["ratio"] < 0.8
    assert "below export.min_accuracy_ratio" in row["reason"]
    assert manifest.read(cfg.job_dir / "export/onnx-fp32")["quality"]["accepted"] is False
    monkeypatch.undo()
    Exporter(cfg, force=True).run(["onnx-fp32"])  # leave a good variant for the other tests


def test_unknown_variant_lists_the_valid_ones(job):
    with pytest.raises(ConfigError, match=r"unknown variant 'onnx-int3'; valid variants: onnx-fp32, onnx-fp16"):
        parse_variant("onnx-int3", load_config(job))
    with pytest.raises(ConfigError, match=r"prune ratio must be in \(0, 100\)"):
        parse_variant("pruned-0-onnx-fp32", load_config(job))
    with pytest.raises(ConfigError, match=r"prune ratio must be in \(0, 100\)"):
        parse_variant("pruned-100", load_config(job))


def test_int4_block_size_that_does_not_divide(job):
    cfg = load_config(job, ["export.int4_block_size=64"])  # hidden size 32 is not a multiple of 64
    with pytest.raises(RuntimeError, match="failed to build: onnx-int4"):
        Exporter(cfg, force=True).run(["onnx-int4"])
    report = json.loads((cfg.job_dir / "export/report.json").read_text())
    row = next(r for r in report["rows"] if r["variant"] == "onnx-int4")
    assert row["status"] == "failed" and "does not divide the input dimension" in row["reason"]
    assert not list((cfg.job_dir / "export").glob(".onnx-int4.tmp-*")), "nothing half-written"


def test_tampered_checkpoint_is_refused(job, tmp_path):
    cfg = load_config(job, [f"output_dir={tmp_path}"])
    src = load_config(job).job_dir / "checkpoint"
    dst = cfg.job_dir / "checkpoint"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    with (dst / "model.safetensors").open("r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    with pytest.raises(manifest.ManifestError, match="model.safetensors does not match its sha256"):
        Exporter(cfg)


def test_missing_checkpoint_via_cli(tmp_path):
    cfg = write_config(tmp_path)
    p = subprocess.run(
        [sys.executable, "-m", "export", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 2 and "no checkpoint at" in p.stderr and "make finetune" in p.stderr


def test_static_quantization_without_calibration_text(tmp_path):
    with pytest.raises(ValueError, match="needs calibration text"):
        build.quantize_static(tmp_path / "x.onnx", tmp_path / "y.onnx", [], "minmax")


def test_architecture_without_onnx_export(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "made-up-encoder"}))
    with pytest.raises(ConfigError, match="ONNX export does not support text-classification for architecture"):
        build.check_onnx_support(tmp_path, "text-classification")


def test_token_classification_variants(tmp_path, tiny_model_dir):
    politics = str(ROOT / "data/crossner/politics")
    cfg = load_config(
        write_config(
            tmp_path,
            model={"path": str(tiny_model_dir), "max_length": 48},
            data={
                "task": "token-classification",
                "source": politics,
                "target": politics,
                "max_train_samples": 48,
                "max_eval_samples": 24,
            },
            export={"latency_samples": 5, "prune_recovery_epochs": 1, "calibration_samples": 16},
        )
    )
    finetune(cfg)
    report = Exporter(cfg).run(
        ["onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static", "onnx-int4", "pruned-50-onnx-int8-dynamic"]
    )
    rows = {r["variant"]: r for r in report["rows"]}
    assert all(rows[n]["status"] in ("accepted", "rejected") for n in rows if n != "checkpoint (PyTorch fp32)")
    assert rows["onnx-fp32"]["max_abs_dlogit"] < 1e-4 and rows["onnx-fp32"]["agreement"] == 1.0
    logits = OnnxRunner(cfg.job_dir / "export/onnx-int8-dynamic")(
        {
            "input_ids": np.array([[101, 2023, 2003, 102]]),
            "attention_mask": np.ones((1, 4)),
            "token_type_ids": np.zeros((1, 4)),
        }
    )
    assert logits.shape == (1, 4, 19), "one score per token and politics tag"


def _has_bitsandbytes_gpu() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _has_bitsandbytes_gpu(), reason="bitsandbytes variants need a CUDA GPU and bitsandbytes")
def test_bitsandbytes_variants_save_and_reload(job):
    cfg = load_config(job)
    report = Exporter(cfg).run(["torch-int8", "torch-nf4"])
    rows = {r["variant"]: r for r in report["rows"]}
    for name in ("torch-int8", "torch-nf4"):
        assert rows[name]["status"] in ("accepted", "rejected"), rows[name]
        config = json.loads((cfg.job_dir / "export" / name / "config.json").read_text())
        assert "quantization_config" in config, "saved quantized: reloads without re-quantizing"
        load_runner(cfg.job_dir / "export" / name)


def test_a_changed_gate_is_applied_to_reused_variants(job, monkeypatch):
    """A variant built under a lenient gate is not waved through by a stricter one just because it is up to date."""
    monkeypatch.setattr(build, "optimize", first_class_only(build.optimize))
    lenient = load_config(job, ["export.min_accuracy_ratio=0.01", "export.min_agreement=0"])
    assert Exporter(lenient, force=True).run(["onnx-fp32"])["best"] == "onnx-fp32"
    monkeypatch.undo()
    mtime = (lenient.job_dir / "export/onnx-fp32/model.onnx").stat().st_mtime_ns
    report = Exporter(load_config(job)).run(["onnx-fp32"])  # the default gate, 0.99
    row = next(r for r in report["rows"] if r["variant"] == "onnx-fp32")
    assert (lenient.job_dir / "export/onnx-fp32/model.onnx").stat().st_mtime_ns == mtime, "reused, not rebuilt"
    assert row["status"] == "rejected" and report["best"] is None
    Exporter(load_config(job), force=True).run(["onnx-fp32"])  # leave a good variant for the other tests


def test_serve_refuses_a_rejected_or_stale_best_unless_named(job, tmp_path):
    from serve.__main__ import servable

    cfg = load_config(job)
    Exporter(cfg).run(["onnx-fp32"])
    good = cfg.job_dir / "export/onnx-fp32"
    assert servable(cfg, good) == []
    strict = servable(load_config(job, ["export.min_accuracy_ratio=1.0"]), good)
    if manifest.read(good)["quality"]["ratio"] < 1.0:  # a tiny model's ONNX copy can match it exactly
        assert "below export.min_accuracy_ratio=1.0" in strict[0]
    else:
        assert strict == []
    # The job's checkpoint was fine-tuned again since: its export is stale.
    other = load_config(job, [f"output_dir={tmp_path}"])
    (other.job_dir / "export").mkdir(parents=True)
    (other.job_dir / "checkpoint").mkdir()
    (other.job_dir / "checkpoint/model.safetensors").write_bytes(b"newer weights")
    manifest.write(other.job_dir / "checkpoint", kind="checkpoint", config={}, parent={}, quality={})
    stale = other.job_dir / "export/onnx-fp32"
    stale.mkdir()
    for f in good.iterdir():
        (stale / f.name).write_bytes(f.read_bytes())
    (other.job_dir / "export/best").symlink_to("onnx-fp32")
    assert servable(other, stale) == ["it was exported from an earlier checkpoint than the job's current one"]
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(job.read_text().replace(str(job.parent / "artifacts"), str(tmp_path)))
    proc = subprocess.run(
        [sys.executable, "-m", "serve", "--config", str(cfg_file), f"output_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "earlier checkpoint" in proc.stderr and "serve.variant=<name>" in proc.stderr


def test_the_scratch_directory_goes_when_an_export_fails(job, monkeypatch):
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).glob("domainlift-export-*"))
    monkeypatch.setattr(Exporter, "time_rows", lambda self, rows: (_ for _ in ()).throw(RuntimeError("interrupted")))
    with pytest.raises(RuntimeError, match="interrupted"):
        Exporter(load_config(job)).run(["onnx-fp32"])
    assert set(Path(tempfile.gettempdir()).glob("domainlift-export-*")) == before


def test_a_full_disk_during_export_is_a_clear_error_and_nothing_looks_complete(job, tmp_path):
    """The export runs with a 1 MB file-size limit (RLIMIT_FSIZE, what a full disk looks like to a writer without
    needing root for a small tmpfs): the ONNX graph cannot be written."""
    out = tmp_path / "artifacts"
    (out / "t").mkdir(parents=True)
    src = load_config(job).job_dir / "checkpoint"
    (out / "t/checkpoint").mkdir()
    for f in src.iterdir():
        (out / "t/checkpoint" / f.name).write_bytes(f.read_bytes())
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000)); "
        "from export.__main__ import main; "
        f"sys.exit(main(['--config', {str(job)!r}, 'output_dir={out}', 'job=t', '--variants', 'onnx-fp32']))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "out of disk space" in proc.stderr + proc.stdout and "failed to build: onnx-fp32" in proc.stderr
    export = out / "t/export"
    assert not (export / "onnx-fp32").exists() and not (export / "best").exists()
    assert not [p for p in export.iterdir() if manifest.is_leftover(p)], "nothing half-written left behind"
