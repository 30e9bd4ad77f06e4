"""The domain-adaptation methods on a tiny random BERT: each changes what it should, and keeps the checkpoint
contract (a plain task model, nothing of the method's extra heads left in it)."""

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from conftest import BOOKS, CHECKPOINT_FILES, ROOT, write_config
from transformers import AutoTokenizer, BertForSequenceClassification, TrainingArguments
from transformers import Trainer as HFTrainer

from domainlift import data as data_mod
from domainlift import manifest, training
from domainlift.config import ConfigError, load_config
from domainlift.tasks import encode_texts
from finetune.methods import dann, fgm, self_train, udalm
from finetune.recipe import run


def test_the_reversal_layer_flips_and_scales_gradients():
    x = torch.ones(3, requires_grad=True)
    (dann.GradientReversal.apply(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.25, -0.5, -0.75]))
    assert dann.reversal_weight(0.0, 0.1, 10) == 0.0
    assert 0.0999 < dann.reversal_weight(1.0, 0.1, 10) <= 0.1


@pytest.mark.parametrize("name", ["dann", "udalm", "fgm", "dapt", "dapt+dann", "self-train", "dapt+self-train"])
def test_each_method_keeps_the_checkpoint_contract(tmp_path, tiny_model_dir, name):
    cfg = load_config(
        write_config(
            tmp_path,
            model={"path": str(tiny_model_dir)},
            data={"source": BOOKS, "max_train_samples": 24},
            method={"name": name, "dapt": {"epochs": 1, "max_samples": 16}, "udalm": {"target_batches": 1}},
        )
    )
    ckpt = run(cfg)
    assert {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} == CHECKPOINT_FILES
    manifest.verify(ckpt)
    saved = BertForSequenceClassification.from_pretrained(ckpt)
    assert not hasattr(saved, "domain_classifier") and not hasattr(saved, "mlm_head")
    assert json.loads((ckpt / "metrics.json").read_text())["method"] == name
    # DAPT (which udalm runs first) is cached by its inputs, with its masked-LM head beside the encoder.
    dapt_runs = list((tmp_path / "artifacts/dapt-cache").glob("*/model.safetensors"))
    assert len(dapt_runs) == (1 if name.startswith("dapt") or name == "udalm" else 0)
    assert all((d.parent / "mlm_head.safetensors").is_file() for d in dapt_runs)


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


def test_dapt_runs_once_per_inputs_and_udalm_carries_its_masked_lm_head_on(tmp_path, tiny_model_dir, caplog):
    def job(name, **data):
        return load_config(
            write_config(
                tmp_path,
                job=name.replace("+", "-"),
                model={"path": str(tiny_model_dir)},
                data={"source": BOOKS, "max_train_samples": 24, **data},
                method={"name": name, "dapt": {"epochs": 1, "max_samples": 16}, "udalm": {"target_batches": 1}},
            )
        )

    run(job("dapt"))
    with caplog.at_level(logging.INFO):
        run(job("udalm"))
    assert "dapt: reusing the encoder adapted with the same inputs" in caplog.text
    assert "method udalm: near-chance target accuracy" in caplog.text, "a method that lost to source-only says so"
    assert "the masked-LM head trained by DAPT carries on" in caplog.text
    (cached,) = (tmp_path / "artifacts/dapt-cache").iterdir()
    assert manifest.verify(cached)["kind"] == "dapt-encoder"
    run(job("dapt", unlabeled=[str(ROOT / "data/amazon-reviews/unlabeled/kitchen.jsonl")]), overwrite=True)
    assert len(list((tmp_path / "artifacts/dapt-cache").iterdir())) == 2, "more target text is a new DAPT"


def test_udalm_draws_the_configured_masked_lm_batches_per_source_batch(tmp_path, tiny_parts):
    tok, model, train = tiny_parts
    corpus = datasets.Dataset.from_dict({"text": ["the kettle boils water in two minutes"] * 64})
    for target_batches, expected in ((3, 3), (None, 2)):  # None: 64 target texts / 32 labelled ones
        cfg = load_config(
            None, ["job=x", "method.name=udalm", f"method.udalm.target_batches={target_batches or 'null'}"]
        )
        trainer = _trainer(
            udalm.Trainer,
            tmp_path,
            udalm.prepare(model, cfg, "text-classification"),
            tok,
            train,
            cfg.method,
            2,
            target=encode_texts(corpus, tok, 16),
            target_collator=udalm.target_collator(tok, cfg),
        )
        drawn = []

        def counted(device, original=trainer.target_batch, drawn=drawn):
            drawn.append(1)
            return original(device)

        trainer.target_batch = counted
        trainer.train()
        assert trainer.k == expected and len(drawn) == 2 * expected, "k target batches in each of the 2 steps"
        assert trainer.task_weight() == 1 / (1 + expected)
        assert len(trainer.extra_losses["mlm_loss"]) == 2


def test_dann_discriminator_is_dropout_then_linear_by_default(tiny_parts):
    _, model, _ = tiny_parts
    cfg = load_config(None, ["job=x", "method.name=dann"])
    layers = list(dann.prepare(model, cfg, "text-classification").domain_classifier)
    assert [type(m).__name__ for m in layers] == ["Dropout", "Linear"] and cfg.method.dann.weight == 0.03


def test_pseudo_labels_are_class_balanced_confident_and_the_teachers_own():
    # 8 texts, the teacher leans positive (6 of 8); the source is balanced.
    logits = np.array([[0, 3], [0, 2], [0, 1], [0, 0.5], [0, 4], [0, 0.1], [2, 0], [1, 0]], dtype=np.float32)
    texts = [f"t{i}" for i in range(8)]
    c = load_config(None, ["job=x", "method.name=self-train", "method.self_train.top_fraction=0.5"]).method.self_train
    pseudo, info = self_train.pseudo_labelled(logits, texts, ["negative", "positive"], ["negative", "positive"], c)
    # at most 0.5 * 8 * 0.5 = 2 per class, the most confident first
    assert sorted(pseudo["text"]) == ["t0", "t4", "t6", "t7"]
    assert info["per_class"] == {"negative": 2, "positive": 2} and info["predicted"] == {"negative": 2, "positive": 6}
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for text, label, soft in zip(pseudo["text"], pseudo["label"], pseudo["soft"]):
        i = texts.index(text)
        assert label == ["negative", "positive"][probs[i].argmax()] and np.allclose(soft, probs[i], atol=1e-6)
    c.threshold, c.labels = 0.9, "hard"
    pseudo, _ = self_train.pseudo_labelled(logits, texts, ["negative", "positive"], ["negative", "positive"], c)
    assert sorted(pseudo["text"]) == ["t0", "t4"] and all(sorted(s) == [0.0, 1.0] for s in pseudo["soft"])
    # balance: predicted keeps the teacher's class mix: the top half of its 6 positives and of its 2 negatives
    c.threshold, c.balance = 0.0, "predicted"
    pseudo, info = self_train.pseudo_labelled(logits, texts, ["negative", "positive"], ["negative", "positive"], c)
    assert sorted(pseudo["text"]) == ["t0", "t1", "t4", "t6"] and info["per_class"] == {"negative": 1, "positive": 3}


def test_the_noisy_students_word_dropout_hides_only_ordinary_tokens_at_its_rate():
    torch.manual_seed(0)
    ids = torch.tensor([[101] + [2000 + i for i in range(998)] + [102], [101, 2000, 2001, 102] + [0] * 996])
    mask = (ids != 0).long()
    out = training.word_dropout(ids, mask, 0.2, [0, 101, 102])
    assert out.dtype == mask.dtype and out.shape == mask.shape
    assert (out[:, 0] == 1).all() and out[0, -1] == 1 and out[1, 3] == 1  # [CLS] and [SEP] always seen
    assert (out[1, 4:] == 0).all(), "padding stays hidden"
    assert 0.16 < 1 - out[0, 1:-1].float().mean() < 0.24  # 998 ordinary tokens, each hidden with p = 0.2
    assert torch.equal(training.word_dropout(ids, mask, 0.0, [0, 101, 102]), mask)
    with pytest.raises(ConfigError, match="noise"):
        load_config(None, ["job=x", "method.name=self-train", "method.self_train.noise=1.0"])


def test_self_training_learns_only_from_unlabeled_text_labelled_by_its_teacher(tmp_path, tiny_model_dir, monkeypatch):
    """A labelled target row can never reach training this way: pseudo-labels are texts of Splits.unlabeled (no
    labels there) with the teacher's predictions, and never a test text."""
    pool = str(ROOT / "data/amazon-reviews/unlabeled/kitchen.jsonl")

    def job(name, method=None, **data):
        data = {"source": BOOKS, "max_train_samples": 24, **data}
        return write_config(tmp_path, job=name, model={"path": str(tiny_model_dir)}, data=data, method=method or {})

    teacher = run(load_config(job("teacher")))
    captured = []
    original = self_train.student_data

    def capture(encoded, pseudo, *rest):
        captured.append(pseudo)
        return original(encoded, pseudo, *rest)

    monkeypatch.setattr(self_train, "student_data", capture)
    method = {"name": "self-train", "self_train": {"teacher": str(teacher), "rounds": 2, "noise": 0.1}}
    cfg = load_config(job("student", method, unlabeled=[pool]))
    metrics = json.loads((run(cfg) / "metrics.json").read_text())
    splits = data_mod.build_splits(cfg.data)
    assert len(captured) == 2 and [r["pseudo_labelled"] for r in metrics["rounds"]] == [len(p) for p in captured]
    assert metrics["teacher"] == str(teacher)
    assert metrics["teacher_target_test"] == json.loads((teacher / "metrics.json").read_text())["target_test"]
    assert "target_test" in metrics["rounds"][-1], "each round's student's own test score is reported"
    first = captured[0]
    assert set(first["text"]) <= set(splits.unlabeled["text"]) and not set(first["text"]) & set(splits.test["text"])
    tok = AutoTokenizer.from_pretrained(teacher)
    logits = self_train.predict_logits(BertForSequenceClassification.from_pretrained(teacher), tok, first["text"], 64)
    assert list(first["label"]) == [["negative", "positive"][k] for k in logits.argmax(-1)], "the teacher's labels"
    assert metrics["train_samples"] == 24 + len(captured[1])
    with pytest.raises(ConfigError, match="does not exist"):
        run(load_config(job("bad", {"name": "self-train", "self_train": {"teacher": str(tmp_path / "nope")}})))
    with pytest.raises(ConfigError, match="does not end in \\+self-train"):
        load_config(job("bad", {"name": "full", "self_train": {"teacher": str(teacher)}}))
