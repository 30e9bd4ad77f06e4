"""Structured pruning that really shrinks the matrices: whole layers, attention heads and FFN neurons.

Layers (export.prune_layers, optional, first): the ones whose removal raises the source dev loss least are
dropped (Sajjad et al. 2023 found dropping layers of a fine-tuned BERT costs little); config.num_hidden_layers
shrinks with them.

Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): on the source dev set,
|d loss / d head_mask| per head, normalised per layer, and |activation x gradient| per FFN neuron.
The least important `ratio` of heads (global ranking, at least one kept per layer) are removed with
transformers' prune_heads (Q/K/V lose rows, the output projection loses columns), and the same `ratio`
of FFN neurons is removed from every layer (intermediate rows + output columns), so config.intermediate_size
stays one number and the pruned model saves and loads as a plain Hugging Face model. A short recovery
fine-tune follows, by default distilling from the unpruned model (export/distill.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import Trainer

from domainlift import tasks
from domainlift.config import JobConfig
from domainlift.training import training_args
from export import distill, evaluate

log = logging.getLogger(__name__)


def pruned_model(ckpt: Path, cfg: JobConfig, dev, train, tokenizer, out: Path, pct: int, whole_layers: int) -> Path:
    """The model in `ckpt` with `whole_layers` layers and then pct% of heads and FFN neurons removed, recovered by a
    short (distillation) fine-tune on the tokenized `train` set, saved as a plain Hugging Face model in `out`.
    Importance is measured on the tokenized `dev` set."""
    task, e = cfg.data.task, cfg.export
    cls = tasks.model_class(task)
    model = cls.from_pretrained(ckpt, attn_implementation="eager")  # head_mask needs eager attention
    teacher = cls.from_pretrained(ckpt)
    dev_batches = []
    for idx, b in evaluate.batches(dev, tokenizer):
        t = {k: torch.as_tensor(v) for k, v in b.items()}
        gold = evaluate.label_matrix(dev.select(idx.tolist()))
        t["labels"] = torch.as_tensor(gold if gold.ndim == 1 else gold[:, : t["input_ids"].shape[1]])
        dev_batches.append(t)
    before = sum(p.numel() for p in model.parameters())
    kept = list(range(model.config.num_hidden_layers))
    if whole_layers:
        kept = drop_layers(model, layer_importance(model, dev_batches), whole_layers)
        log.info("pruned %d whole layers: kept layers %s", whole_layers, kept)
    heads, ffn = importance(model, dev_batches)
    info = {"layers_kept": kept, **prune(model, heads, ffn, pct / 100)}
    after = sum(p.numel() for p in model.parameters())
    log.info("pruned %d%%: %d -> %d parameters, heads removed %s", pct, before, after, info["heads_removed"])
    if e.prune_recovery_epochs > 0:
        model = recover(
            model,
            teacher,
            train,
            tasks.collator(task, tokenizer),
            tokenizer,
            out.with_name(out.name + "-recovery"),
            cfg,
            kept,
        )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "pruning.json").write_text(json.dumps({**info, "parameters": [before, after]}, indent=2))
    return out


def importance(model, batches: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(head importance [layers, heads], FFN neuron importance per layer) from gradients on labelled batches."""
    cfg = model.config
    layers = list(model.base_model.encoder.layer)
    head_mask = torch.ones(cfg.num_hidden_layers, cfg.num_attention_heads, requires_grad=True)
    acts: list[torch.Tensor] = []

    def keep_activation(module, inputs, output):  # returns None: a hook's return value would replace the output
        output.retain_grad()
        acts.append(output)

    hooks = [layer.intermediate.register_forward_hook(keep_activation) for layer in layers]
    ffn = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    model.eval()  # no dropout: the score of the model as it will run
    try:
        for batch in batches:
            acts.clear()
            out = model(**batch, head_mask=head_mask)
            out.loss.backward()
            for i, a in enumerate(acts):
                ffn[i] += (a * a.grad).abs().sum(dim=(0, 1)).detach()
    finally:
        for h in hooks:
            h.remove()
    heads = head_mask.grad.abs().detach()
    heads = heads / (heads.norm(dim=1, keepdim=True) + 1e-12)  # per-layer normalisation, as in the paper
    model.zero_grad(set_to_none=True)
    return heads, ffn


def layer_importance(model, batches: list[dict]) -> list[float]:
    """Per layer: how much the dev loss rises when that layer is skipped (its input passes on unchanged)."""
    encoder = model.base_model.encoder
    layers = encoder.layer
    model.eval()

    def dev_loss() -> float:
        with torch.no_grad():
            return sum(model(**b).loss.item() for b in batches) / len(batches)

    full = dev_loss()
    scores = []
    try:
        for i in range(len(layers)):
            encoder.layer = torch.nn.ModuleList(layer for j, layer in enumerate(layers) if j != i)
            scores.append(dev_loss() - full)
    finally:
        encoder.layer = layers
    return scores


def drop_layers(model, scores: list[float], n: int) -> list[int]:
    """Remove the n layers with the lowest scores in place; return the indices of the kept layers."""
    keep = sorted(sorted(range(len(scores)), key=lambda i: scores[i])[n:])
    encoder = model.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in keep)
    model.config.num_hidden_layers = len(keep)
    return keep


def prune(model, heads_score: torch.Tensor, ffn_score: list[torch.Tensor], ratio: float) -> dict:
    """Remove the least important heads and FFN neurons in place; return what was removed."""
    n_layers, n_heads = heads_score.shape
    n_prune = int(round(ratio * n_layers * n_heads))
    order = sorted((heads_score[l, h].item(), l, h) for l in range(n_layers) for h in range(n_heads))
    removed: dict[int, list[int]] = {}
    for _, l, h in order:
        if sum(len(v) for v in removed.values()) >= n_prune:
            break
        if len(removed.get(l, [])) < n_heads - 1:  # keep at least one head per layer
            removed.setdefault(l, []).append(h)
    model.prune_heads(removed)

    keep = int(round((1 - ratio) * model.config.intermediate_size))
    for layer, score in zip(model.base_model.encoder.layer, ffn_score):
        idx = torch.sort(torch.topk(score, keep).indices).values
        layer.intermediate.dense = _take(layer.intermediate.dense, idx, dim=0)
        layer.output.dense = _take(layer.output.dense, idx, dim=1)
    model.config.intermediate_size = keep
    return {"heads_removed": {str(k): sorted(v) for k, v in removed.items()}, "ffn_kept_per_layer": keep}


def _take(linear: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    w = linear.weight.index_select(dim, idx).detach().clone()
    bias = linear.bias is not None
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias)
    new.weight.data.copy_(w)
    if bias:
        new.bias.data.copy_(linear.bias.detach() if dim == 1 else linear.bias.index_select(0, idx).detach())
    return new


def recover(model, teacher, train_ds, collator, tokenizer, out_dir: Path, cfg: JobConfig, kept_layers: list[int]):
    """A short fine-tune of the pruned model on the job's training data (export.prune_recovery_epochs, the job's
    train: settings), distilling from the unpruned teacher unless export.prune_distill is off."""
    e = cfg.export
    if e.prune_distill:
        return distill.distill(
            model, teacher, train_ds, collator, tokenizer, out_dir, cfg, epochs=e.prune_recovery_epochs,
            learning_rate=cfg.train.learning_rate, kept_layers=kept_layers, hidden_weight=e.prune_hidden_weight,
            task_weight=0.5,
        )  # fmt: skip
    args = training_args(
        cfg.train, out_dir, epochs=e.prune_recovery_epochs, learning_rate=cfg.train.learning_rate, select=False
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=collator, processing_class=tokenizer
    )
    trainer.train()
    return trainer.model
