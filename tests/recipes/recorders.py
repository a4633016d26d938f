"""Callbacks that record what a CLI run did, for the recipe tests (named by class_path in their YAML)."""
from __future__ import annotations

import pytorch_lightning as pl
import torch


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class WeightRecorder(pl.Callback):
    """The model's state after every optimizer step, and the state validation runs with (first batch, per epoch)."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []
        self.at_validation: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append(snapshot(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self.at_validation.append((trainer.global_step, snapshot(pl_module)))


class StepRecorder(pl.Callback):
    """Parameters (and their values, param group's lr and weight decay) before training, every optimizer step's
    param-group learning rates, and the first training batch with what the step started from."""

    def __init__(self):
        self.start: list[tuple[torch.nn.Parameter, torch.Tensor, float, float]] = []
        self.lrs: list[list[float]] = []
        self.initial_lrs: list[float] = []
        self.first_batch: dict | None = None

    def on_train_start(self, trainer, pl_module):
        groups = trainer.optimizers[0].param_groups
        self.start = [(p, p.detach().clone(), g["lr"], g["weight_decay"]) for g in groups for p in g["params"]]
        self.initial_lrs = [g.get("initial_lr", g["lr"]) for g in groups]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = {"batch": {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)},
                                "rng": torch.get_rng_state(), "state": snapshot(pl_module)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "loss" not in self.first_batch:
            self.first_batch["loss"] = outputs["loss"].detach().clone()
