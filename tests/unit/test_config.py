"""The job config: shipped YAMLs validate, typos are named, overrides are typed."""

import logging
from pathlib import Path

import pytest

from domainlift.config import ConfigError, JobConfig, default_model_path, load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {
        "sentiment-kitchen",
        "sentiment-kitchen-lora",
        "sentiment-books-to-kitchen",
        "ner-conll2003-to-politics",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths are relative to the repo root, where make runs
    cfg = load_config(path)
    assert cfg.job == path.stem
    for p in (cfg.data.source, cfg.data.target, cfg.pretrain.data):
        assert p is None or Path(p).exists(), f"{path.name} names missing data {p}"
    assert path.read_text().startswith("#"), "each config starts with its purpose and the command that runs it"


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("train:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key train.learnin_rate.*train.learning_rate"):
        load_config(p)


def test_unknown_top_level_section(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key trian.*Did you mean train"):
        load_config(p)


def test_dotted_overrides_are_typed(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("train:\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=1", "train.learning_rate=1e-4", "method.lora.target_modules=[query]"])
    assert cfg.train.epochs == 1.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.method.lora.target_modules == ["query"]
    assert cfg.job == "job"


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epochs=many", "train.epochs must be float"),
        ("method.name=qlora", "method.name is 'qlora'; choose one of full, lora"),
        ("data.test_size=0", "data.test_size is 0"),
        ("epochs", "must look like dotted.key=value"),
        ("train.batch_size=0", "batch_size"),
        ("train.early_stopping_start_epoch=-1", "early_stopping_start_epoch must be >= 0"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, match):
    p = tmp_path / "job.yaml"
    p.write_text("{}\n")
    with pytest.raises(ConfigError, match=match):
        load_config(p, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_default_model_is_the_packaged_minilm():
    path = default_model_path()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert JobConfig().model.path is None


@pytest.mark.parametrize("job", ["/", "../up", "a/b", ".hidden", "..", "x y"])
def test_a_job_name_cannot_leave_the_artifacts_directory(job):
    with pytest.raises(ConfigError, match="letters, digits, '.', '_' and '-' only"):
        load_config(None, [f"job={job}"])
    assert load_config(None, ["job=books-to-kitchen_v2.1"]).job == "books-to-kitchen_v2.1"


def test_only_the_settings_of_the_parts_a_method_runs_decide_its_checkpoint(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data: {source: data/amazon-reviews/kitchen.jsonl}\n")

    def settings(*overrides):
        return load_config(path, list(overrides)).finetuning_settings()

    assert settings("method.dann.weight=0.5") == settings(), "source-only runs no DANN"
    assert settings("method.name=dann", "method.dann.weight=0.5") != settings("method.name=dann")
    st = settings("method.name=dapt+self-train")["method"]
    assert set(st) == {"name", "dapt", "self_train"}
    assert settings("method.name=full", "method.self_train.top_fraction=0.5") == settings(), "a self-train teacher"
    assert "resume" not in settings("train.resume=true")["train"]
    assert settings("export.prune_layers=2", "serve.workers=2") == settings()


def test_a_warmup_longer_than_the_early_stopping_window_is_warned(caplog, tmp_path, monkeypatch):
    # 10 % of a 300-epoch cap is 30 epochs of warm-up: patience 8 can end the run before the lr has risen.
    from domainlift.training import training_args

    monkeypatch.chdir(ROOT)
    ner = load_config(ROOT / "configs/ner-conll2003-to-politics.yaml")
    with caplog.at_level(logging.WARNING, logger="domainlift.training"):
        training_args(ner.train, tmp_path, epochs=300, learning_rate=5e-5, select=True)  # the shipped warm-up: 0
        assert "warm-up" not in caplog.text
        ner.train.warmup_ratio = 0.1
        training_args(ner.train, tmp_path, epochs=300, learning_rate=5e-5, select=True)
        assert "30.0 epochs of warm-up, longer than early_stopping_start_epoch=0 + early_stopping_patience=8" in (
            caplog.text
        )
        caplog.clear()
        ner.train.early_stopping_start_epoch = 25  # the patience ends at epoch 33 at the earliest, after the warm-up
        training_args(ner.train, tmp_path, epochs=300, learning_rate=5e-5, select=True)
        assert "warm-up" not in caplog.text


def test_early_stopping_counts_the_patience_only_after_the_start_epoch(tmp_path):
    # CrossNER ai fine-tuned directly: dev F1 0.014 at epoch 1, then 0 (no entity predicted) for 8 epochs, and
    # patience 8 ended the run at epoch 9. With start_epoch the patience starts counting after the warm-up.
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from finetune.trainer import EarlyStopping

    args = TrainingArguments(str(tmp_path), metric_for_best_model="f1", greater_is_better=True, report_to=[])

    def stopped_at(callback, scores):
        state, control = TrainerState(best_metric=None), TrainerControl()
        for epoch, score in enumerate(scores, start=1):
            state.epoch = float(epoch)
            callback.on_evaluate(args, state, control, {"eval_f1": score})
            state.best_metric = max(score, state.best_metric or score)  # what the Trainer keeps for the best model
            if control.should_training_stop:
                return epoch
        return None

    all_o_then_learning = [0.014] + [0.0] * 20 + [0.1, 0.2, 0.3] + [0.3] * 8
    assert stopped_at(EarlyStopping(8), all_o_then_learning) == 9
    late = EarlyStopping(8, start_epoch=20)
    assert stopped_at(late, all_o_then_learning) == 32, "8 epochs without a gain after the best, epoch 24"
    resumed = type(late)(**late.state()["args"])  # how the Trainer rebuilds a callback when a run resumes
    assert resumed.start_epoch == 20 and resumed.early_stopping_patience == 8
