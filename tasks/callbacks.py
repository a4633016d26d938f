"""Callbacks every task gets from ``BaseTask.configure_callbacks``."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import BaseFinetuning, BasePredictionWriter, Callback
from pytorch_lightning.trainer.states import TrainerFn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from .optim import extend_schedulers
from .utils import local_log_dir, send_picture_to_loggers


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


class EmptyRankMetrics(Callback):
    """Under DDP, a rank that got no evaluation sample (fewer samples than processes) still joins every
    collective its peers make during the evaluation: the buffer broadcast DDP runs on the first forward pass of
    a validation during fit, and the epoch-end synchronisation of the metrics they logged (through the task's
    ``log_metrics_without_batches``). Without this the run hangs."""

    @staticmethod
    def _has_no_samples(loaders: Any) -> bool:
        from .datamodules.base import EvalDistributedSampler

        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        samplers = [getattr(loader, "sampler", None) for loader in loaders if loader is not None]
        return bool(samplers) and all(isinstance(s, EvalDistributedSampler) and not s.indices for s in samplers)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = trainer.strategy.model
        if (trainer.state.fn == TrainerFn.FITTING and isinstance(model, DistributedDataParallel)
                and model.will_sync_module_buffers() and self._has_no_samples(trainer.val_dataloaders)):
            # what DDP's first forward pass does on the other ranks; like it, later passes of this
            # evaluation do not sync again
            model._sync_buffers()
            model.require_forward_param_sync = False

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:  # sanity checks too: their logged metrics are synchronised as well
            pl_module.log_metrics_without_batches(stage)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class FreezeBackbone(BaseFinetuning):
    """Freeze the backbone's feature layers (every parameter outside the task's ``head_modules``; the head
    trains), optionally releasing them from epoch ``unfreeze_at_epoch`` on at ``lr * lr_scale``. Frozen
    batch-norm layers are kept in eval mode so their ImageNet statistics are used as they are, as for
    detection fine-tuning (S1 L650); released, they train again.

    The release adds the backbone to the optimizer with the task's weight-decay split (``param_groups``) at
    the schedule's current factor, and the schedulers drive the new groups from then on. A run resumed past
    the release gets those groups back from the checkpoint (``BaseFinetuning`` stores them) and they are
    not added twice."""

    def __init__(self, unfreeze_at_epoch: int | None = None, lr_scale: float = 1.0):
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_scale = lr_scale
        self._released: list[torch.nn.Parameter] = []

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        # body_modules is already flat (BaseFinetuning.flatten_modules minus the head): module by module, as
        # freeze() would flatten a parent again and reach the head inside it.
        modules = pl_module.body_modules()
        # The release gives back only what this froze: stages a task froze itself (a detector's
        # trainable_stages, stages its heads never use) stay frozen. Merged, as setup runs again per stage.
        trainable = [p for m in modules for p in m.parameters(recurse=False) if p.requires_grad]
        self._released = list({id(p): p for p in self._released + trainable}.values())
        for module in modules:
            self.freeze_module(module)

    def _still_frozen(self, epoch: int) -> bool:
        return self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed mid-epoch skips that epoch's on_train_epoch_start; repeating it is harmless.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        extend_schedulers(config.scheduler for config in trainer.lr_scheduler_configs)
        # Lightning keeps each module's mode across validation and never calls train() per epoch, so both
        # directions are set here, every epoch (a resumed run starts with every module in train mode).
        frozen = self._still_frozen(trainer.current_epoch)
        for module in pl_module.body_modules():
            if isinstance(module, _BatchNorm):
                module.train(not frozen)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if self._still_frozen(epoch):
            return
        for module in pl_module.body_modules():
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
        newly_trainable = [p for p in self._released if not p.requires_grad]
        for param in self._released:
            param.requires_grad_(True)
        if newly_trainable:
            self._rebuild_ddp(pl_module._trainer)
        # Identity, not Lightning's filter_on_optimizer: that compares values, so a fresh BN layer would look
        # like any other already in the optimizer.
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        released = {id(p) for p in self._released} - present
        named = [(n, p) for n, p in pl_module.named_parameters() if id(p) in released]
        if not named:
            return
        # The first group is the head's at the base lr: the new groups start at the same point of the schedule
        # (exact for multiplicative schedules, cosine with eta_min 0 included).
        reference = optimizer.param_groups[0]
        base = reference.get("initial_lr", reference["lr"])
        factor = reference["lr"] / base if base else 1.0
        for group in pl_module.param_groups(named, base * self.lr_scale):
            group["initial_lr"] = group["lr"]
            group["lr"] = group["lr"] * factor
            optimizer.add_param_group(group)


    @staticmethod
    def _rebuild_ddp(trainer: pl.Trainer | None) -> None:
        """DDP registers only the parameters that require grad when it wraps the model: released ones would
        train without their gradients being averaged across ranks, and the ranks' weights would drift apart."""
        strategy = trainer.strategy if trainer is not None else None
        if strategy is not None and isinstance(strategy.model, DistributedDataParallel) and hasattr(strategy, "configure_ddp"):
            strategy.model = strategy.lightning_module
            strategy.configure_ddp()


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` outputs under ``<run dir>/predictions`` in the task's formats.

    The task provides ``prediction_records(prediction, batch, out_dir, batch_idx) -> list[dict]`` (it may also
    write per-sample files under ``out_dir``, named in its records relative to it) and
    ``save_predictions(records, out_dir)``, which rank zero calls once with every rank's records, so a DDP run
    produces what a single process does. Under DDP the other ranks write into a local staging folder and send
    their records and files to rank zero through ``torch.distributed`` (no shared filesystem is needed).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._records: list[dict] = []
        self._out: Path | None = None

    def _distributed(self, trainer: pl.Trainer) -> bool:
        return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero or not self._distributed(trainer):
            self._out = Path(self.output_dir) if self.output_dir else local_log_dir(trainer) / "predictions"
        else:
            self._out = Path(tempfile.mkdtemp(prefix=f"densecnn-predict-rank{trainer.global_rank}-"))
        self._out.mkdir(parents=True, exist_ok=True)
        self._records = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self._records.extend(pl_module.prediction_records(prediction, batch, self._out, batch_idx))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out, records = self._out, self._records
        if self._distributed(trainer):
            files = {} if trainer.is_global_zero else {str(p.relative_to(out)): p.read_bytes()
                                                        for p in out.rglob("*") if p.is_file()}
            gathered = [None] * trainer.world_size if trainer.is_global_zero else None
            dist.gather_object((records, files), gathered, dst=0)
            if not trainer.is_global_zero:
                shutil.rmtree(out, ignore_errors=True)
                return
            records = [r for rank_records, _ in gathered for r in rank_records]
            for _, rank_files in gathered:
                for relative, data in rank_files.items():
                    (out / relative).parent.mkdir(parents=True, exist_ok=True)
                    (out / relative).write_bytes(data)
        written = pl_module.save_predictions(records, out)
        print(f"predictions written to {written}")


class ExplainCallback(Callback):
    """Attribution pictures (``tasks.explain.explain_task``) of the same validation images every
    ``every_n_epochs`` epochs during fit: how what the network looks at evolves while it trains (Zeiler & Fergus
    Sec. 4.1's feature evolution, for attributions). Each picture goes to every configured logger that takes
    images (tag ``explain/<method>/<image>``, at the global step) and to
    ``<log dir>/pictures/explain/<method>_<image>_epoch<NNN>.png``.

    The images are the first ``num_images`` of the first validation batch (the first training batch when the run
    validates nothing), kept from the first epoch on so every epoch explains the same ones. ``target``,
    ``layers``, ``window``, ``stride``, ``region``, ``boxes``, ``max_boxes`` are ``explain_task``'s. Runs on rank zero only,
    after the epoch's validation, with the network in eval mode and its modes restored afterwards.

    In a config::

        trainer:
          callbacks:
            - class_path: tasks.callbacks.ExplainCallback
              init_args: {methods: [saliency, gradcam], every_n_epochs: 5, num_images: 4}
    """

    def __init__(self, methods: Sequence[str] = ("saliency", "gradcam"), every_n_epochs: int = 1,
                 num_images: int = 4, target: str | None = None, layers: list[str] | None = None,
                 window: list[int] | None = None, stride: list[int] | None = None,
                 region: list[int] | None = None, boxes: str = "detections", max_boxes: int = 3):
        from densecnn.explain.attribution import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"ExplainCallback methods {list(methods)}: each one of {', '.join(METHODS)}")
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"ExplainCallback: every_n_epochs ({every_n_epochs}) and num_images ({num_images}) "
                             f"must be at least 1")
        self.methods = list(methods)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.options = {"target": target, "layers": layers, "window": window, "stride": stride, "region": region,
                        "boxes": boxes, "max_boxes": max_boxes}
        self._batch: Any = None  # the first validation batch's images
        self._train_batch: Any = None  # the first training batch's, for runs without validation
        self.written: list[Path] = []

    @staticmethod
    def _first(batch: Any, n: int) -> Any:
        from .explain import _take

        return _detached_cpu(_take(batch, n))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._batch is None and batch_idx == 0 and dataloader_idx == 0 and trainer.is_global_zero:
            self._batch = self._first(batch, self.num_images)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train_batch is None and batch_idx == 0 and trainer.is_global_zero:
            self._train_batch = self._first(batch, self.num_images)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        batch = self._batch if self._batch is not None else self._train_batch
        if not trainer.is_global_zero or batch is None or (epoch + 1) % self.every_n_epochs:
            return
        from densecnn.viz import save_png

        from .explain import explain_task

        folder = local_log_dir(trainer) / "pictures" / "explain"
        folder.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode(False), torch.enable_grad():
            for method in self.methods:
                for picture in explain_task(pl_module, batch, method, progress=False, **self.options):
                    send_picture_to_loggers(trainer.loggers, f"explain/{method}/{picture.name}", picture.image,
                                            trainer.global_step)
                    path = folder / f"{method}_{picture.name}_epoch{epoch:03d}.png"
                    save_png(picture.image, path)
                    self.written.append(path)


def _detached_cpu(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu()
    if isinstance(batch, dict):
        return {k: _detached_cpu(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_detached_cpu(v) for v in batch)
    return batch
