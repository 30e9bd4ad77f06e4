"""The Trainer every labelled phase trains with (the task fine-tuning and the labelled pre-training): the method's
Trainer class (or transformers' own), the task's collator and metrics, early stopping, a fresh task head."""

from __future__ import annotations

from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer

from domainlift import metrics, tasks
from domainlift.config import JobConfig


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping, plus Keras' start_from_epoch: evaluations up to `start_epoch` do not count
    against the patience (the Trainer still keeps the best model from the first evaluation on)."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0, start_epoch: float = 0):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.start_epoch = start_epoch

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if state.epoch is not None and state.epoch <= self.start_epoch + 1e-6:  # epochs are floats: 3.0000001
            return
        super().on_evaluate(args, state, control, metrics, **kwargs)

    def state(self) -> dict:  # what a resumed run rebuilds the callback from
        saved = super().state()
        saved["args"]["start_epoch"] = self.start_epoch
        return saved


def task_model(task: str, start: Path, labels: list[str]):
    """The encoder at `start` with a new head for `labels`."""
    return tasks.model_class(task).from_pretrained(
        start, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )


def build(cfg: JobConfig, model, tokenizer, args, train_ds, dev_ds, labels, method=None, unlabeled=None) -> Trainer:
    """method: a module of finetune/methods (None: plain fine-tuning); unlabeled: the target's text, for methods
    that also train on unlabeled target batches (they have target_collator)."""
    task = cfg.data.task
    callbacks = []
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(
            EarlyStopping(cfg.train.early_stopping_patience, start_epoch=cfg.train.early_stopping_start_epoch)
        )
    extra = {}
    trainer_class = getattr(method, "Trainer", Trainer)
    if trainer_class is not Trainer:
        extra["method_cfg"] = cfg.method
    if hasattr(method, "target_collator"):  # the objective also trains on unlabeled target text
        extra["target"] = tasks.encode_texts(unlabeled, tokenizer, cfg.model.max_length)
        extra["target_collator"] = method.target_collator(tokenizer, cfg)
    return trainer_class(
        **extra,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        data_collator=tasks.collator(task, tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics.metrics_fn(task, labels),
        callbacks=callbacks,
    )


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint-N the Trainer finished writing (trainer_state.json is written last), so a
    run killed in the middle of a save resumes from the save before it."""
    done = [c for c in Path(run_dir).glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return str(max(done, key=lambda c: int(c.name.rsplit("-", 1)[1]))) if done else None


def strip(results: dict, prefix: str) -> dict:
    """The Trainer's `<prefix>_<metric>` keys as plain metric names, without model selection's internal key."""
    drop = f"{prefix}_{metrics.SELECTION_METRIC}"
    return {k[len(prefix) + 1 :]: v for k, v in results.items() if k.startswith(prefix + "_") and k != drop}
