"""BaseTask: what every densecnn task shares.

* the backbone comes from ``densecnn.create_backbone`` (``backbone``, ``weights``, ``backbone_kwargs``);
* ``__init__`` calls ``configure_models``, ``configure_losses`` and ``configure_metrics`` (TorchGeo's layout);
* one ``MetricCollection`` per stage (``self.metrics_for("train" | "val" | "test")``), logged as Metric objects so
  Lightning computes them once per epoch and DDP syncs them;
* one shared step for train/val/test: subclasses implement ``compute_loss(batch, stage) -> (loss, outputs)``
  and ``update_metrics(stage, outputs, batch)``;
* optimizer and schedule from plain arguments (so they read in YAML and travel in the checkpoint):
  SGD with momentum and weight decay or AdamW; step, multi-step, plateau or cosine decay; linear or
  constant warm-up; a lower learning rate for the backbone;
* fine-tuning: ``freeze_backbone`` trains only the task's head ("re-train just the softmax", S3 L144-151),
  ``unfreeze_backbone_at_epoch`` releases the backbone later at ``lr * backbone_lr_scale``;
* pictures go to every configured logger that takes images and, always, to ``<log dir>/pictures``;
* a default checkpoint callback monitors the task's metric and keeps ``last.ckpt``.
"""
from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn
from torchmetrics import MeanMetric

from densecnn import create_backbone
from densecnn.data import DataError
from densecnn.viz import save_png

from .utils import local_log_dir

STAGES = ("train", "val", "test")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "step", "multistep", "plateau", "cosine")


class CheckpointError(ValueError):
    """A checkpoint that does not belong to the task (or class count) it is loaded into."""


class BaseTask(pl.LightningModule, ABC):
    #: the metric the default checkpoint callback and the plateau schedule follow
    monitor: str = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        strict_weights: bool = True,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        lr_scheduler: Literal["none", "step", "multistep", "plateau", "cosine"] = "none",
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.1,
        warmup_mode: Literal["linear", "constant"] = "linear",
        freeze_backbone: bool = False,
        unfreeze_backbone_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        num_log_images: int = 16,
    ):
        """
        Args:
            backbone: a ``densecnn.list_backbones()`` name or ``timm:<name>``.
            weights: pretrained weights for the backbone: a file, URL, ``torchvision:<Enum>.<NAME>`` or a
                densecnn checkpoint (see ``densecnn.weights``).
            backbone_kwargs: architecture options passed to ``create_backbone`` (e.g. ``{shortcut: A}``).
            strict_weights: missing/unexpected keys in ``weights`` are an error (True) or a warning.
            optimizer: ``sgd`` (momentum, nesterov, weight decay: the papers' recipe) or ``adamw``.
            lr_scheduler: ``none``, ``step`` (``{step_size, gamma}``), ``multistep`` (``{milestones, gamma}``),
                ``plateau`` (divide by 10 when the monitored metric stops improving: ``{factor, patience}``)
                or ``cosine`` (``{T_max, eta_min}``, T_max defaults to the run's length).
            lr_scheduler_interval: step the schedule every ``epoch`` or every optimizer ``step``.
            warmup_steps: optimizer steps of warm-up before the schedule: ``linear`` from
                ``warmup_start_factor * lr`` to ``lr``, or ``constant`` at ``warmup_start_factor * lr``
                (ResNet-110's 0.01-then-0.1, S1 L542-548).
            freeze_backbone: train only the head (the backbone's classifier and any task head).
            unfreeze_backbone_at_epoch: with ``freeze_backbone``, release the backbone at this epoch.
            backbone_lr_scale: learning-rate multiplier for the backbone's feature layers.
            num_log_images: how many examples the validation/test pictures show.
        """
        super().__init__()
        self.save_hyperparameters()
        self._check_choice("optimizer", optimizer, OPTIMIZERS)
        self._check_choice("lr_scheduler", lr_scheduler, SCHEDULERS)
        if unfreeze_backbone_at_epoch is not None and not freeze_backbone:
            raise ValueError("model.init_args.unfreeze_backbone_at_epoch needs freeze_backbone: true")
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @staticmethod
    def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise ValueError(f"model.init_args.{key}: {value!r} is not one of {', '.join(choices)}")

    # ---- what subclasses provide -------------------------------------------------------------------------
    def configure_models(self) -> None:
        self.backbone = self.build_backbone()

    def configure_losses(self) -> None:
        """Subclasses set their loss modules here."""

    def configure_metrics(self) -> None:
        # keys are "<stage>_metrics": a bare "train" would shadow nn.Module.train
        self.metrics = nn.ModuleDict({f"{stage}_metrics": self.make_metrics().clone(prefix=f"{stage}/")
                                      for stage in STAGES})
        # The loss as a sample-weighted mean Metric: DDP then syncs sums and counts, which stays exact when
        # ranks hold different numbers of samples (Lightning's sync_dist would average the ranks' means).
        self.loss_means = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})

    def metrics_for(self, stage: str):
        return self.metrics[f"{stage}_metrics"]

    @abstractmethod
    def make_metrics(self):
        """The task's ``torchmetrics.MetricCollection`` (cloned once per stage)."""

    @abstractmethod
    def compute_loss(self, batch: Any, stage: str) -> tuple[torch.Tensor, Any]:
        """The batch's loss and the outputs ``update_metrics`` needs."""

    @abstractmethod
    def update_metrics(self, stage: str, outputs: Any, batch: Any) -> None:
        """Update ``self.metrics_for(stage)`` with one batch."""

    def batch_size_of(self, batch: Any) -> int:
        return len(batch["image"]) if isinstance(batch, dict) else len(batch[0])

    def log_examples(self, stage: str, batch: Any, outputs: Any) -> None:
        """Subclasses render a picture of the first validation/test batch with ``log_picture``."""

    def freezes_body(self) -> bool:
        """Whether ``body_modules`` are frozen during fit (``freeze_backbone``; tasks may add their own cases)."""
        return bool(self.hparams.freeze_backbone)

    def head_modules(self) -> list[nn.Module]:
        """Modules that stay trainable when the backbone is frozen: the backbone's classifier by default,
        plus whatever heads a task adds."""
        classifier = getattr(self.backbone, "get_classifier", None)
        return [classifier()] if callable(classifier) else []

    # ---- shared pieces -------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names stored in the hyper-parameters (filled from the data at fit time), else indices."""
        names = self.hparams.get("class_names")
        return list(names) if names else [str(i) for i in range(self.hparams.get("num_classes") or 0)]

    def sync_class_names(self):
        """Check ``num_classes`` and the stored class names against the DataModule's ``class_names`` and store
        them, so a checkpoint always knows its labels. Returns the DataModule (or None)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if not names:
            return datamodule
        names = list(names)
        if len(names) != self.hparams.num_classes:
            raise DataError(f"model.init_args.num_classes is {self.hparams.num_classes} but the data at "
                            f"{getattr(datamodule, 'root', '?')} has {len(names)} classes: {names[:10]}")
        stored = self.hparams.get("class_names")
        if stored and list(stored) != names:
            raise DataError(f"the data's classes {names[:10]} differ from the model's {list(stored)[:10]}: "
                            f"labels would mean different things")
        self.hparams.class_names = names
        return datamodule

    def build_backbone(self, **overrides) -> nn.Module:
        h = self.hparams
        kwargs = {**(h.backbone_kwargs or {}), **overrides}
        return create_backbone(h.backbone, weights=h.weights, strict=h.strict_weights, **kwargs)

    def backbone_body_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for m in self.head_modules() for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in head]

    def body_modules(self) -> list[nn.Module]:
        """Leaf modules of the backbone outside the head: what ``freeze_backbone`` freezes."""
        head = {id(m) for h in self.head_modules() for m in h.modules()}
        return [m for m in self.backbone.modules() if not list(m.children()) and id(m) not in head]

    def forward(self, x: torch.Tensor) -> Any:
        return self.backbone(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, batch_idx, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "test")

    def _shared_step(self, batch: Any, batch_idx: int, stage: str) -> torch.Tensor:
        loss, outputs = self.compute_loss(batch, stage)
        batch_size = self.batch_size_of(batch)
        training = stage == "train"
        loss_mean = self.loss_means[f"{stage}_loss"]
        loss_mean(loss.detach(), weight=batch_size)
        self.log(f"{stage}/loss", loss_mean, on_step=training, on_epoch=True, prog_bar=training,
                 batch_size=batch_size)
        self.update_metrics(stage, outputs, batch)
        self.log_dict(self.metrics_for(stage), on_step=False, on_epoch=True, prog_bar=not training,
                      batch_size=batch_size)
        if batch_idx == 0 and not training and not self.trainer.sanity_checking:
            self.log_examples(stage, batch, outputs)
        return loss

    # ---- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        h = self.hparams
        body = {id(p) for p in self.backbone_body_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in body], "lr": h.lr * h.backbone_lr_scale},
                  {"params": [p for p in trainable if id(p) not in body], "lr": h.lr}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError(f"{type(self).__name__}: no trainable parameters (is everything frozen?)")
        if h.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov,
                                        weight_decay=h.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        schedulers = []
        if h.warmup_steps > 0:
            if h.warmup_mode == "linear":
                warmup = torch.optim.lr_scheduler.LinearLR(optimizer, h.warmup_start_factor, 1.0, h.warmup_steps)
            else:
                warmup = torch.optim.lr_scheduler.ConstantLR(optimizer, h.warmup_start_factor, h.warmup_steps)
            schedulers.append({"scheduler": warmup, "interval": "step", "name": "warmup"})
        main = self._main_scheduler(optimizer)
        if main is not None:
            schedulers.append(main)
        return [optimizer], schedulers

    def _main_scheduler(self, optimizer: torch.optim.Optimizer) -> dict | None:
        h = self.hparams
        kwargs = dict(h.lr_scheduler_kwargs or {})
        sched = torch.optim.lr_scheduler
        try:
            if h.lr_scheduler == "none":
                return None
            if h.lr_scheduler == "step":
                scheduler = sched.StepLR(optimizer, **{"step_size": 30, "gamma": 0.1, **kwargs})
            elif h.lr_scheduler == "multistep":
                scheduler = sched.MultiStepLR(optimizer, **{"gamma": 0.1, **kwargs})
            elif h.lr_scheduler == "plateau":
                scheduler = sched.ReduceLROnPlateau(optimizer, mode=self.monitor_mode,
                                                    **{"factor": 0.1, "patience": 5, **kwargs})
                return {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch", "name": "plateau"}
            else:
                length = (self.trainer.estimated_stepping_batches if h.lr_scheduler_interval == "step"
                          else max(1, self.trainer.max_epochs or 1))
                scheduler = sched.CosineAnnealingLR(optimizer, **{"T_max": int(length), **kwargs})
        except TypeError as err:
            raise ValueError(f"model.init_args.lr_scheduler_kwargs {kwargs} do not fit lr_scheduler "
                             f"{h.lr_scheduler!r}: {err}") from err
        return {"scheduler": scheduler, "interval": h.lr_scheduler_interval, "name": h.lr_scheduler}

    # ---- callbacks, pictures, checkpoints ------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        from .callbacks import FreezeBackbone, MetricsJSONWriter, PredictionWriter

        callbacks: list[Callback] = [MetricsJSONWriter()]
        trainer = self.trainer
        if trainer.training:
            existing = trainer.checkpoint_callbacks
            if existing and all(cb.monitor is None for cb in existing):
                callbacks.append(ModelCheckpoint(monitor=self.monitor, mode=self.monitor_mode, save_last=True,
                                                 filename="best-epoch{epoch:03d}", auto_insert_metric_name=False))
            if self.freezes_body():
                callbacks.append(FreezeBackbone(self.hparams.unfreeze_backbone_at_epoch,
                                                self.hparams.backbone_lr_scale))
        if trainer.predicting:
            callbacks.append(PredictionWriter())
        return callbacks

    @property
    def run_dir(self) -> Path:
        """The run's log directory (``metrics.json``, ``pictures/``, ``predictions/`` go here), as rank zero
        sees it; no collective call, so it is safe inside ``if trainer.is_global_zero`` blocks."""
        return local_log_dir(self.trainer)

    def log_picture(self, tag: str, picture: np.ndarray) -> Path | None:
        """Send an HxWx3 uint8 picture to the loggers that take images and save it under ``pictures/``."""
        if not self.trainer.is_global_zero:
            return None
        step = self.current_epoch
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image(tag, picture, step, dataformats="HWC")
            elif hasattr(logger, "log_image"):  # W&B, Neptune, ...
                logger.log_image(key=tag, images=[picture], step=step)
        folder = self.run_dir / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', tag)}_epoch{step:03d}.png"
        save_png(picture, path)
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["densecnn"] = {"task": type(self).__name__}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader, plus: the checkpoint must come from this task (``BaseTask`` loads any task),
        and the backbone's original ``weights`` file is not read again (its tensors are in the checkpoint)."""
        saved = _saved_task_name(checkpoint_path)
        target = cls
        if saved is not None:
            if cls is BaseTask:
                import tasks

                target = getattr(tasks, saved, cls)
            elif saved != cls.__name__:
                raise CheckpointError(f"{checkpoint_path}: saved by {saved}, not {cls.__name__}; load it with "
                                      f"tasks.{saved}.load_from_checkpoint")
        kwargs.setdefault("weights", None)
        try:
            return super(BaseTask, target).load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
                weights_only=True, **kwargs)
        except (RuntimeError, ValueError) as err:
            overrides = {k: v for k, v in kwargs.items() if k != "weights"}
            raise CheckpointError(f"{checkpoint_path}: cannot load into {target.__name__} with the saved "
                                  f"hyper-parameters{f' and overrides {overrides}' if overrides else ''}: {err}") from err


def _saved_task_name(path) -> str | None:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: checkpoint not found") from err
    except Exception as err:  # noqa: BLE001  (any unreadable file gets the same clear message)
        raise CheckpointError(f"{path}: not a readable densecnn/Lightning checkpoint ({err})") from err
    info = checkpoint.get("densecnn") if isinstance(checkpoint, dict) else None
    if isinstance(checkpoint, dict) and "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict'); to start a task from plain "
                              f"backbone weights pass them as model.init_args.weights")
    if info is None:
        warnings.warn(f"{path}: not written by densecnn; loading it without checking which task saved it",
                      stacklevel=3)
    return info.get("task") if info else None
