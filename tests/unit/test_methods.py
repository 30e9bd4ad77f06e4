"""The domain-adaptation methods on a tiny random BERT: each changes what it should, and keeps the checkpoint
contract (a plain task model, nothing of the method's extra heads left in it)."""

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import BOOKS, CHECKPOINT_FILES, write_config
from transformers import AutoTokenizer, BertForSequenceClassification, TrainingArguments
from transformers import Trainer as HFTrainer

from domainlift import data as data_mod
from domainlift import manifest
from domainlift.config import ConfigError, load_config
from domainlift.tasks import encode_texts
from finetune.methods import dann, fgm, udalm
from finetune.recipe import run


def test_the_reversal_layer_flips_and_scales_gradients():
    x = torch.ones(3, requires_grad=True)
    (dann.GradientReversal.apply(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.25, -0.5, -0.75]))
    assert dann.reversal_weight(0.0, 0.1, 10) == 0.0
    assert 0.0999 < dann.reversal_weight(1.0, 0.1, 10) <= 0.1


@pytest.mark.parametrize("name", ["dann", "udalm", "fgm", "dapt", "dapt+dann"])
def test_each_method_keeps_the_checkpoint_contract(tmp_path, tiny_model_dir, name):
    cfg = load_config(
        write_config(
            tmp_path,
            model={"path": str(tiny_model_dir)},
            data={"source": BOOKS, "max_train_samples": 24},
            method={"name": name, "dapt": {"epochs": 1, "max_samples": 16}},
        )
    )
    ckpt = run(cfg)
    assert {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} == CHECKPOINT_FILES
    manifest.verify(ckpt)
    saved = BertForSequenceClassification.from_pretrained(ckpt)
    assert not hasattr(saved, "domain_classifier") and not hasattr(saved, "mlm_head")
    assert json.loads((ckpt / "metrics.json").read_text())["method"] == name
    assert (cfg.job_dir / "run/dapt/encoder/model.safetensors").is_file() == name.startswith("dapt")


@pytest.fixture
def tiny_parts(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    texts = ["the pan is great", "the cup broke in a week", "works fine", "terrible box"] * 8
    train = datasets.Dataset.from_dict({**tok(texts, truncation=True, max_length=16), "labels": [1, 0, 1, 0] * 8})
    return tok, model, train


def _trainer(cls, tmp_path, model, tok, train, method_cfg, steps, **extra):
    from transformers import DataCollatorWithPadding

    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, learning_rate=2e-3, per_device_train_batch_size=8, report_to=[]
    )
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tok),
        method_cfg=method_cfg,
        **extra,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the FGM test calls training_step alone
    return trainer


def test_the_target_masked_lm_loss_falls_on_a_repeated_corpus(tmp_path, tiny_parts):
    tok, model, train = tiny_parts
    cfg = load_config(None, ["job=x"])
    corpus = datasets.Dataset.from_dict({"text": ["the kettle boils water in two minutes"] * 64})
    model = udalm.prepare(model, cfg, "text-classification")
    trainer = _trainer(
        udalm.Trainer,
        tmp_path,
        model,
        tok,
        train,
        cfg.method,
        40,
        target=encode_texts(corpus, tok, 16),
        target_collator=udalm.target_collator(tok, cfg),
    )
    trainer.train()
    losses = trainer.extra_losses["mlm_loss"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0  # nats


def test_fgm_adds_adversarial_gradients_and_puts_the_embeddings_back(tmp_path, tiny_parts):
    tok, model, train = tiny_parts
    for m in model.modules():  # no dropout: the two passes must differ only by the perturbation
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = load_config(None, ["job=x", "method.fgm.epsilon=1.0"])
    trainer = _trainer(fgm.Trainer, tmp_path, model, tok, train, cfg.method, 1)
    batch = next(iter(trainer.get_train_dataloader()))
    embeddings = model.get_input_embeddings().weight
    before = embeddings.detach().clone()
    HFTrainer.training_step(trainer, model, batch)  # one plain pass
    plain = embeddings.grad.clone()
    model.zero_grad()
    trainer.training_step(model, batch)  # the plain pass + the adversarial one
    assert torch.equal(embeddings, before), "the perturbation is removed exactly"
    adversarial = embeddings.grad - plain
    rows = plain.abs().sum(dim=1) > 0  # the batch's tokens
    assert adversarial[~rows].abs().sum() == 0 and adversarial[rows].abs().sum() > 0
    assert not torch.allclose(adversarial, plain, atol=1e-6), "the second pass saw perturbed embeddings"


@pytest.mark.parametrize("how", ["delete", "swap"])
def test_augmentation_never_changes_labels(how):
    ds = datasets.Dataset.from_dict(
        {"text": ["one two three four five six", "a b", "single"], "label": ["pos", "neg", "pos"]}
    )
    out = data_mod.augment(ds, how, 0.5, 2, seed=0)
    assert len(out) == 9 and list(out["label"]) == ["pos", "neg", "pos"] * 3
    for orig, new in zip(list(ds["text"]) * 2, out["text"][3:]):
        assert new.split(), "never an empty text"
        if how == "swap":
            assert sorted(new.split()) == sorted(orig.split())
        else:
            assert set(new.split()) <= set(orig.split())
    assert list(out["text"][3:]) != list(ds["text"]) * 2, "something was altered"


def test_few_shot_moves_target_labels_into_training(tmp_path):
    base = load_config(write_config(tmp_path, data={"source": BOOKS, "max_train_samples": None}))
    few = load_config(write_config(tmp_path, data={"source": BOOKS, "max_train_samples": None, "target_labelled": 50}))
    a, b = data_mod.build_splits(base.data), data_mod.build_splits(few.data)
    assert len(b.train) == len(a.train) + 50 and len(b.unlabeled) == len(a.unlabeled) - 50
    added = set(b.train["text"]) - set(a.train["text"])
    assert added <= set(a.unlabeled["text"])  # they came from the target's (once unlabeled) train part
    assert list(b.test["text"]) == list(a.test["text"])


def test_method_and_data_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="dapt\\+<one of those>"):
        load_config(write_config(tmp_path, method={"name": "dann+dapt"}))
    with pytest.raises(ConfigError, match="text classification only"):
        load_config(write_config(tmp_path, data={"task": "token-classification", "augment": "swap"}))
    with pytest.raises(data_mod.DataError, match="the target is the source"):
        data_mod.build_splits(load_config(write_config(tmp_path, data={"target_labelled": 5})).data)
