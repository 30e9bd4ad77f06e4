"""The one place that turns the job's `train:` section into transformers TrainingArguments, for every phase that
trains: the task fine-tuning and labelled pre-training (finetune/), DAPT (finetune/phases.py) and the recovery
fine-tune after pruning (export/prune.py). They share optimiser, schedule, batch size, seed and precision. Also the
one word dropout (the noisy student of self-training, the students' noisy distillation texts).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import TrainingArguments

from domainlift.config import TrainConfig
from domainlift.metrics import SELECTION_METRIC

log = logging.getLogger(__name__)


def resolved_precision(choice: str) -> str:
    """train.precision as this machine trains it: "auto" is bf16 or fp16 on a GPU, fp32 on a CPU."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast buys little for BERT-size training and costs accuracy checks


def precision_flags(choice: str) -> dict:
    choice = resolved_precision(choice)
    if choice in ("bf16", "fp16") and not torch.cuda.is_available():
        log.warning("train.precision=%s on CPU: autocast runs, but expect no speed-up over fp32", choice)
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def warn_long_warmup(t: TrainConfig, epochs: float) -> None:
    """The warm-up is a fraction of the epoch cap, not of the epochs a run lasts: with a large cap and early stopping
    (CrossNER's 300 epochs, patience 8) 10 % is 30 epochs at a low learning rate, and early stopping can end the run
    before the warm-up does (CrossNER ai stayed at F1 0.008 that way)."""
    warmup_epochs = t.warmup_ratio * epochs
    per_epoch = not t.eval_steps and t.max_steps <= 0  # patience counts epochs only when evaluation is per epoch
    # the earliest epoch early stopping can end a run: the patience counts from train.early_stopping_start_epoch
    window = t.early_stopping_start_epoch + t.early_stopping_patience
    if t.early_stopping_patience and per_epoch and warmup_epochs > window:
        log.warning(
            "train.warmup_ratio=%g of %g epochs is %.1f epochs of warm-up, longer than early_stopping_start_epoch=%g "
            "+ early_stopping_patience=%d: early stopping can end the run while the learning rate is still rising; "
            "lower train.warmup_ratio (e.g. to %.2g, one epoch) or train.epochs, or raise "
            "train.early_stopping_start_epoch",
            t.warmup_ratio, epochs, warmup_epochs, t.early_stopping_start_epoch, t.early_stopping_patience, 1 / epochs,
        )  # fmt: skip


def unselected_settings(t: TrainConfig) -> dict:
    """The train.* settings that training_args(select=False) reads besides its epochs and learning rate: what a
    student or pruned model was trained with, kept in its export recipe (export/variants.py) so that changing one
    rebuilds it. Keep in step with training_args. The precision is the resolved one: "auto" trains in bf16 on a GPU
    and fp32 on a CPU, so a student distilled on a GPU is not reused as if it were the CPU's."""
    keys = "seed batch_size gradient_accumulation_steps weight_decay warmup_ratio group_by_length".split()
    return {k: getattr(t, k) for k in keys} | {"precision": resolved_precision(t.precision)}


def training_args(t: TrainConfig, out: Path, *, epochs: float, learning_rate: float, select: bool) -> TrainingArguments:
    """select=True (task fine-tuning, labelled pre-training): evaluate on dev and save a resumable state every epoch
    (or every train.eval_steps), keep the best by the selection metric, honour train.max_steps. select=False (DAPT,
    pruning recovery): train for `epochs`, no evaluation, no saved states."""
    strategy = ("steps" if t.eval_steps else "epoch") if select else "no"
    if select:
        warn_long_warmup(t, epochs)
    selection = (
        {
            "eval_steps": t.eval_steps,
            "save_steps": t.eval_steps,
            "save_total_limit": t.save_total_limit,
            "load_best_model_at_end": True,
            "metric_for_best_model": SELECTION_METRIC,
            "greater_is_better": True,
        }
        if select
        else {}
    )
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=t.max_steps if select else -1,
        learning_rate=learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        eval_strategy=strategy,
        save_strategy=strategy,
        **selection,
        group_by_length=t.group_by_length,
        length_column_name="length",
        seed=t.seed,
        data_seed=t.seed,
        logging_dir=str(Path(out) / "tensorboard"),
        logging_steps=t.logging_steps,
        report_to=["tensorboard"],
        disable_tqdm=False,
        dataloader_num_workers=0,
        # Several CPU processes (torchrun without GPUs) only form a gloo process group with use_cpu.
        use_cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        **precision_flags(t.precision),
    )


def word_dropout(input_ids, attention_mask, p: float, special_ids: list[int]):
    """The attention mask with each ordinary token dropped (0) with probability p; special tokens and padding kept."""
    special = torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
    drop = (torch.rand(input_ids.shape, device=input_ids.device) < p) & ~special
    return attention_mask * ~drop
