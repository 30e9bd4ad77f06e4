"""What the domain-adaptation objectives share: unlabeled target-domain batches drawn next to each source batch."""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from domainlift.errors import ConfigError


class TargetTrainer(Trainer):
    """A Trainer whose training loss also sees a batch of unlabeled target text per step (cycled through, in
    a seeded random order); evaluation and prediction are the plain Trainer's."""

    output_hidden_states = False  # whether target_loss needs the source batch's hidden states

    def __init__(self, *args, method_cfg, target: datasets.Dataset, target_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.method_cfg = method_cfg
        if len(target) == 0:
            raise ConfigError(
                "this method trains on unlabeled target-domain text, but the target's train part is empty: "
                "set data.target to a domain with more rows than data.test_size"
            )
        self.target_dataset = target
        self._target_loader = DataLoader(
            target,
            batch_size=self.args.per_device_train_batch_size,
            shuffle=True,
            collate_fn=target_collator,
            generator=torch.Generator().manual_seed(self.args.seed),
        )
        self._target_iter = iter(())
        self.extra_losses: dict[str, list[float]] = {}  # every step's value of each extra loss term
        self._logged: dict[str, int] = {}

    def record(self, name: str, value) -> None:
        self.extra_losses.setdefault(name, []).append(float(value))

    def log(self, logs: dict, *args, **kwargs) -> None:
        # Training logs also show the mean of each extra loss term since the previous log line.
        if "loss" in logs:
            for name, values in self.extra_losses.items():
                recent = values[self._logged.get(name, 0) :]
                if recent:
                    logs[name] = round(sum(recent) / len(recent), 4)
                self._logged[name] = len(values)
        super().log(logs, *args, **kwargs)

    def target_batch(self, device) -> dict:
        try:
            batch = next(self._target_iter)
        except StopIteration:
            self._target_iter = iter(self._target_loader)
            batch = next(self._target_iter)
        return {k: v.to(device) for k, v in batch.items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation and prediction: the task loss alone
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        task_inputs = {**inputs, "output_hidden_states": True} if self.output_hidden_states else inputs
        task_loss, outputs = super().compute_loss(model, task_inputs, True, num_items_in_batch)
        target = self.target_batch(inputs["input_ids"].device)
        loss = self.task_weight() * task_loss + self.target_loss(unwrap(model), outputs, target)
        return (loss, outputs) if return_outputs else loss

    def task_weight(self) -> float:
        """The task loss's weight in the training loss (the method's own term is weighted by the method)."""
        return 1.0

    def target_loss(self, model, outputs, target: dict):
        """The method's extra loss term on an unlabeled target batch (model unwrapped; outputs: the source's)."""
        raise NotImplementedError

    def progress(self) -> float:
        """Fraction of training done, 0 -> 1."""
        return self.state.global_step / max(self.state.max_steps, 1)


def unwrap(model):
    return model.module if hasattr(model, "module") else model  # DDP
