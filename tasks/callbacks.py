"""Callbacks every task gets from ``BaseTask.configure_callbacks``."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning, BasePredictionWriter, Callback
from pytorch_lightning.trainer.states import TrainerFn
from torch.nn.modules.batchnorm import _BatchNorm

from .utils import local_log_dir


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated metrics.json


class MetricsJSONWriter(Callback):
    """After ``validate`` and ``test``, write the logged metrics to ``<log dir>/metrics.json`` (merged with
    what an earlier stage of the same run wrote) and print them with the file's path."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer, "val/")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test/")

    @staticmethod
    def _write(trainer: pl.Trainer, prefix: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(prefix) and torch.as_tensor(v).numel() == 1}
        if not trainer.is_global_zero or not metrics:
            return
        path = local_log_dir(trainer) / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = json.loads(path.read_text()) if path.is_file() else {}
        existing.update({k: (None if math.isnan(v) else v) for k, v in metrics.items()})
        _write_json_atomically(path, existing)
        print(f"metrics written to {path}")


class FreezeBackbone(BaseFinetuning):
    """Freeze the backbone's feature layers (the task's head trains), optionally unfreezing them at epoch
    ``unfreeze_at_epoch`` with learning rate ``lr * lr_scale``. Frozen batch-norm layers are kept in eval
    mode so their ImageNet statistics are used as they are, as for detection fine-tuning (S1 L650)."""

    def __init__(self, unfreeze_at_epoch: int | None = None, lr_scale: float = 1.0):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_scale = lr_scale

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.body_modules(), train_bn=False)

    def _still_frozen(self, epoch: int) -> bool:
        return self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._still_frozen(trainer.current_epoch):
            for module in pl_module.body_modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if self.unfreeze_at_epoch is not None and epoch == self.unfreeze_at_epoch:
            lr = optimizer.param_groups[0]["lr"] * self.lr_scale
            self.unfreeze_and_add_param_group(pl_module.body_modules(), optimizer, lr=lr, train_bn=True)


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs under ``<log dir>/predictions`` in the task's formats.

    The task provides ``prediction_records(prediction, batch, out_dir, batch_idx) -> list[dict]`` (it may also
    write per-sample files there) and ``save_predictions(records, out_dir)``, which rank zero calls once with
    every rank's records, so a DDP run produces one file as a single process does.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._records: list[dict] = []
        self._out: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resolved once, on every rank together: Trainer.log_dir is a collective, and ranks may see different
        # numbers of batches, so it must not be called per batch.
        self._out = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        self._out.mkdir(parents=True, exist_ok=True)
        self._records = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self._records.extend(pl_module.prediction_records(prediction, batch, self._out, batch_idx))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self._out
        records = self._records
        if trainer.world_size > 1:
            part = out / f".records.rank{trainer.global_rank}.json"
            part.write_text(json.dumps(records))
            trainer.strategy.barrier("densecnn_predictions")
            if trainer.is_global_zero:
                parts = sorted(out.glob(".records.rank*.json"))
                records = [r for p in parts for r in json.loads(p.read_text())]
                for p in parts:
                    p.unlink()
            trainer.strategy.barrier("densecnn_predictions_merged")
        if trainer.is_global_zero:
            written = pl_module.save_predictions(records, out)
            print(f"predictions written to {written}")
