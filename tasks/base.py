"""BaseTask: what every densecnn task shares.

* the backbone comes from ``densecnn.create_backbone`` (``backbone``, ``weights``, ``backbone_kwargs``);
* ``__init__`` calls ``configure_models``, ``configure_losses`` and ``configure_metrics`` (TorchGeo's layout);
* one ``MetricCollection`` per stage (``self.metrics_for("train" | "val" | "test")``), logged as Metric objects so
  Lightning computes them once per epoch and DDP syncs them;
* one shared step for train/val/test: subclasses implement ``compute_loss(batch, stage) -> (loss, outputs)``
  and ``update_metrics(stage, outputs, batch)``;
* optimizer and schedule from plain arguments (so they read in YAML and travel in the checkpoint):
  SGD with momentum and weight decay or AdamW (no decay on norm layers, biases and other 1-D parameters
  unless asked); step, multi-step, plateau or cosine decay; linear or constant warm-up; a lower learning
  rate for the backbone;
* fine-tuning: ``freeze_backbone`` trains only the task's head ("re-train just the softmax", S3 L144-151),
  ``unfreeze_backbone_at_epoch`` releases the backbone later at ``lr * backbone_lr_scale``;
* pictures go to every configured logger that takes images and, always, to ``<log dir>/pictures``;
* a default checkpoint callback monitors the task's metric and keeps ``last.ckpt``;
* fast paths for every task: ``channels_last`` (the model's 4-D tensors and its 4-D inputs in ``channels_last``,
  5-D ones in ``channels_last_3d``) and ``compile`` (``torch.compile`` of what ``compile_targets`` names, applied
  to methods in place so the ``state_dict`` keys never change); under ``bf16-mixed`` the metrics are updated in
  float32, outside autocast.
"""
from __future__ import annotations

import math
import re
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning, Callback
from torch import nn
from torchmetrics import MeanMetric

from densecnn import create_backbone
from densecnn.data import DataError
from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densecnn.viz import save_png

from .checkpoints import (CheckpointError, collect_rng_states, default_checkpoints, is_lightning_default_checkpoint,
                          read_checkpoint, restore_rng_states, use_atomic_checkpoint_io)
from .optim import no_weight_decay_patterns, param_groups
from .utils import local_log_dir, send_picture_to_loggers

# ``on_after_batch_transfer`` (channels_last inputs) is the module's on purpose; Lightning warns on every run with a
# DataModule that the module's hook is the one used, which is what is meant.
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule` but "
                                          r"have passed in a `LightningDataModule`")

STAGES = ("train", "val", "test")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "step", "multistep", "plateau", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: memory layout for a tensor of each rank under ``channels_last`` (images and 2D weights; clips and 3D weights)
CHANNELS_LAST_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def to_channels_last(x):
    """A 4-D tensor in ``channels_last``, a 5-D one in ``channels_last_3d``, others unchanged; given a module,
    converts its parameters and buffers so (``nn.Module.to(memory_format=...)`` takes one format for all ranks,
    and a model can hold both, e.g. an inflated 3D network with a 2D head)."""
    if isinstance(x, nn.Module):
        for tensor in (*x.parameters(), *x.buffers()):
            tensor.data = to_channels_last(tensor.data)
        return x
    if isinstance(x, torch.Tensor) and x.dim() in CHANNELS_LAST_FORMATS:
        return x.contiguous(memory_format=CHANNELS_LAST_FORMATS[x.dim()])
    return x


def as_float32(outputs):
    """``outputs`` (tensors, possibly in dicts, lists, tuples) with every floating tensor in float32: what the
    metrics are updated with under ``bf16-mixed``/``16-mixed``, so they accumulate in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() and outputs.dtype != torch.float32 else outputs
    if isinstance(outputs, dict):
        return {k: as_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(as_float32(v) for v in outputs)
    return outputs


class BaseTask(pl.LightningModule, ABC):
    """The LightningModule every task derives from (TorchGeo's ``BaseTask`` pattern): builds the backbone from
    the registry with its weights, the task's losses and one ``MetricCollection`` per stage, the optimiser and
    schedule from plain keys (SGD/AdamW, warm-up, step/plateau/cosine), freezing and unfreezing, checkpoint
    identity checks and exact resumption, and the pictures and ``metrics.json`` of a run.

    Subclasses implement the network and the step; ``__init__``'s arguments are below.
    """
    #: the metric the default checkpoint callback and the plateau schedule follow
    monitor: str = "val/loss"
    monitor_mode: Literal["min", "max"] = "min"
    #: hyper-parameters that make a checkpoint fit only its own model: a run given a checkpoint refuses other values
    identity_hparams: tuple[str, ...] = ("backbone", "backbone_kwargs", "num_classes")
    #: the batch entries the network reads, put in channels_last layout on the device with ``channels_last``
    input_keys: tuple[str, ...] = ("image",)

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
        weight_decay_norm_and_bias: bool = False,
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
        checkpoint_every_n_minutes: float | None = 10.0,
        checkpoint_every_n_steps: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_kwargs: dict[str, Any] | None = None,
    ):
        """
        Args:
            backbone: a ``densecnn.list_backbones()`` name or ``timm:<name>``.
            weights: pretrained weights for the backbone: a file, URL, ``torchvision:<Enum>.<NAME>`` or a
                densecnn checkpoint (see ``densecnn.weights``).
            backbone_kwargs: architecture options passed to ``create_backbone`` (e.g. ``{shortcut: A}``).
            strict_weights: missing/unexpected keys in ``weights`` are an error (True) or a warning.
            optimizer: ``sgd`` (momentum, nesterov, weight decay: the papers' recipe) or ``adamw``.
            weight_decay_norm_and_bias: False (the default, timm's convention): norm layers' weights and
                biases, all biases, layer scales (every 1-D parameter) and what a timm model lists in
                ``no_weight_decay()`` (a ViT's ``pos_embed``, ``cls_token``) get no weight decay; True: every
                parameter decays, as in the original papers.
            lr_scheduler: ``none``, ``step`` (``{step_size, gamma}``), ``multistep`` (``{milestones, gamma}``),
                ``plateau`` (divide by 10 when the monitored metric stops improving: ``{factor, patience}``)
                or ``cosine`` (``{T_max, eta_min}``; T_max defaults to the rest of the run after warm-up).
            lr_scheduler_interval: step the schedule every ``epoch`` or every optimizer ``step``. A cosine
                without ``T_max`` runs per step when ``trainer.max_steps`` is set or ``max_epochs`` is not;
                per step it starts after the warm-up, per epoch the warm-up scales its first steps.
            warmup_steps: optimizer steps of warm-up before the schedule: ``linear`` from
                ``warmup_start_factor * lr`` to ``lr``, or ``constant`` at ``warmup_start_factor * lr``
                (ResNet-110's 0.01-then-0.1, S1 L542-548).
            freeze_backbone: train only the head (the backbone's classifier and any task head).
            unfreeze_backbone_at_epoch: with ``freeze_backbone``, release the backbone at this epoch (also
                when a run resumes past it); it joins the optimizer at ``lr * backbone_lr_scale``, scaled by
                the schedule's current factor, with the same weight-decay split.
            backbone_lr_scale: learning-rate multiplier for the backbone's feature layers.
            num_log_images: how many examples the validation/test pictures show.
            checkpoint_every_n_minutes, checkpoint_every_n_steps: besides the best checkpoint and ``last.ckpt``
                at each validation, the default checkpointing rewrites ``last.ckpt`` this often during training
                (``null`` turns either off), so ``fit --ckpt_path last`` after a kill continues from there.
                Used only when ``trainer.callbacks`` configures no ``ModelCheckpoint``.
            channels_last: keep the model's 4-D weights and inputs in ``torch.channels_last`` memory layout and
                5-D ones (3D convolutions, clips) in ``channels_last_3d``: the layout cuDNN's tensor-core kernels
                and oneDNN's CPU kernels use, so no transposes around each convolution. Same numbers, other
                strides; checkpoints load either way.
            compile: ``torch.compile`` the task's heavy part (``compile_targets``: the backbone's feature
                extractor; Faster R-CNN's torchvision backbone with its FPN; the dense network's whole
                multi-scale forward) when a Trainer sets the model up (``configure_model``). The methods are
                compiled in place, so checkpoints keep their keys (no ``_orig_mod.``) and load into a task
                with or without ``compile``.
            compile_mode: ``torch.compile``'s ``mode``: ``default`` (null), ``reduce-overhead`` (CUDA graphs),
                ``max-autotune`` or ``max-autotune-no-cudagraphs``.
            compile_kwargs: further ``torch.compile`` arguments, e.g. ``{backend: aot_eager}``,
                ``{dynamic: false}``, ``{fullgraph: true}``.
        """
        super().__init__()
        self.save_hyperparameters()
        self._check_choice("optimizer", optimizer, OPTIMIZERS)
        self._check_choice("lr_scheduler", lr_scheduler, SCHEDULERS)
        if compile_mode is not None:
            self._check_choice("compile_mode", compile_mode, COMPILE_MODES)
        if unfreeze_backbone_at_epoch is not None and not freeze_backbone:
            raise ValueError("model.init_args.unfreeze_backbone_at_epoch needs freeze_backbone: true")
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        if channels_last:
            to_channels_last(self)

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

    def update_metrics_float32(self, stage: str, outputs: Any, batch: Any) -> None:
        """``update_metrics`` with float32 outputs and autocast off: under ``bf16-mixed`` the network's outputs
        are bfloat16 (8-bit mantissa), and the metrics' arithmetic on them (depth errors, box IoUs, ...) must
        not run in it."""
        with torch.autocast(self.device.type, enabled=False):
            self.update_metrics(stage, as_float32(outputs), batch)

    def batch_size_of(self, batch: Any) -> int:
        return len(batch["image"]) if isinstance(batch, dict) else len(batch[0])

    def log_metrics_without_batches(self, stage: str) -> None:
        """Under DDP, a rank that evaluated no batch logs the same metric objects its peers logged per step, so
        every rank joins their epoch-end synchronisation (``EmptyRankMetrics`` calls this)."""
        if self.loss_means[f"{stage}_loss"].update_count == 0:
            self.log(f"{stage}/loss", self.loss_means[f"{stage}_loss"], on_step=False, on_epoch=True, batch_size=1)
            self.log_dict(self.metrics_for(stage), on_step=False, on_epoch=True, batch_size=1)

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

    def normalisation(self) -> tuple[Sequence[float], Sequence[float]]:
        """The per-channel ``(mean, std)`` the input images were normalised with: the DataModule's ``mean`` and
        ``std``, ImageNet's when it has none or no trainer is attached. Pictures undo it to show the pixels."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD)

    def build_backbone(self, **overrides) -> nn.Module:
        h = self.hparams
        kwargs = {**(h.backbone_kwargs or {}), **overrides}
        return create_backbone(h.backbone, weights=h.weights, strict=h.strict_weights, **kwargs)

    def backbone_body_parameters(self) -> list[nn.Parameter]:
        head = {id(p) for m in self.head_modules() for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in head]

    def body_modules(self) -> list[nn.Module]:
        """The backbone's modules outside the head that own parameters directly, leaves or not (Jarrett's gains,
        a ViT's ``pos_embed``, layer scales): what ``freeze_backbone`` freezes."""
        head = {id(m) for h in self.head_modules() for m in h.modules()}
        return [m for m in BaseFinetuning.flatten_modules(self.backbone) if id(m) not in head]

    def forward(self, x: torch.Tensor) -> Any:
        return self.backbone(x)

    def export_spec(self, *, dynamic_batch: bool = True):
        """What ``python -m densecnn export`` writes for this task: a ``densecnn.export.ExportSpec`` (the network
        with its outputs in the units ``preprocess.json`` states, example inputs, preprocessing). Task families
        that can be exported override it."""
        from densecnn.errors import UserError

        raise UserError(f"{type(self).__name__}: export to ONNX / ExportedProgram is not supported for this task")

    # ---- fast paths ----------------------------------------------------------------------------------------
    def compile_targets(self) -> list[tuple[nn.Module, str]]:
        """``(module, method name)`` pairs that ``compile: true`` compiles: by default the backbone's
        ``forward_features`` (the convolutions, which every task calls; ``forward`` goes through it) and
        GoogLeNet's ``forward_with_aux`` (its training path, which does not). Families whose heavy part is
        elsewhere override this."""
        targets = [(self.backbone, "forward_features" if hasattr(self.backbone, "forward_features") else "forward")]
        if callable(getattr(self.backbone, "forward_with_aux", None)):
            targets.append((self.backbone, "forward_with_aux"))
        return targets

    def compile_options(self) -> dict[str, Any]:
        h = self.hparams
        mode = h.get("compile_mode")
        return {**({"mode": mode} if mode not in (None, "default") else {}), **(h.get("compile_kwargs") or {})}

    def configure_model(self) -> None:
        """Lightning's set-up hook (every ``fit``/``validate``/``test``/``predict``, before the weights of a
        ``ckpt_path`` are restored): with ``compile``, each of ``compile_targets`` is replaced on its module by
        ``torch.compile`` of itself. An instance attribute, not a wrapper module (``torch.compile(module)``
        would prefix every ``state_dict`` key with ``_orig_mod.``), so checkpoints are the same with and
        without ``compile``. Compilation itself happens at the first call, on the device the model is on."""
        if not self.hparams.get("compile") or getattr(self, "_compiled", False):
            return
        options = self.compile_options()
        for module, name in self.compile_targets():
            setattr(module, name, torch.compile(getattr(module, name), **options))
        self._compiled = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``channels_last``, the network's inputs (``input_keys``) in the model's layout, once, on the
        device (a 4-D batch in ``channels_last``, 5-D clips in ``channels_last_3d``)."""
        if self.hparams.get("channels_last") and isinstance(batch, dict):
            batch = {**batch, **{k: to_channels_last(batch[k]) for k in self.input_keys if k in batch}}
        return batch

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
        loss_mean(loss.detach().float(), weight=batch_size)
        self.log(f"{stage}/loss", loss_mean, on_step=training, on_epoch=True, prog_bar=training,
                 batch_size=batch_size)
        self.update_metrics_float32(stage, outputs, batch)
        self.log_dict(self.metrics_for(stage), on_step=False, on_epoch=True, prog_bar=not training,
                      batch_size=batch_size)
        if batch_idx == 0 and not training and not self.trainer.sanity_checking and not self.tuning():
            self.log_examples(stage, batch, outputs)
        return loss

    # ---- optimisation --------------------------------------------------------------------------------------
    def param_groups(self, named_params: list[tuple[str, nn.Parameter]], lr: float) -> list[dict]:
        """Optimizer groups for these parameters at ``lr``, split by ``weight_decay_norm_and_bias``; also what
        ``FreezeBackbone`` adds when it releases the backbone."""
        h = self.hparams
        return param_groups(named_params, lr, h.weight_decay, decay_norm_and_bias=h.weight_decay_norm_and_bias,
                            no_weight_decay=() if h.weight_decay_norm_and_bias else no_weight_decay_patterns(self))

    # Lightning's LearningRateFinder runs its search in a callback's on_fit_start, after configure_optimizers
    # and before this module's on_fit_start, then writes its suggestion into hparams.lr and every param group's
    # lr. The schedules were built from the old lr (a chained warm-up would start at the full suggestion and
    # climb past it; cosine keeps the old base lr) and backbone_lr_scale is lost: build them again.
    def on_fit_start(self) -> None:
        if self.hparams.lr != getattr(self, "_optimizer_lr", self.hparams.lr):
            self.trainer.strategy.setup_optimizers(self.trainer)
        self._fit_started = True

    def on_fit_end(self) -> None:
        self._fit_started = False

    def tuning(self) -> bool:
        """Whether a tuner (the learning-rate finder) is running its trial steps before the real fit: its
        validation has no logger, and pictures would land in ``default_root_dir``."""
        return (self._trainer is not None and self.trainer.state.fn == "fit"
                and not getattr(self, "_fit_started", False))

    def configure_optimizers(self) -> Any:
        h = self.hparams
        self._optimizer_lr = h.lr
        body = {id(p) for p in self.backbone_body_parameters()}
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = (self.param_groups([(n, p) for n, p in trainable if id(p) in body], h.lr * h.backbone_lr_scale)
                  + self.param_groups([(n, p) for n, p in trainable if id(p) not in body], h.lr))
        if not groups:
            raise ValueError(f"{type(self).__name__}: no trainable parameters (is everything frozen?)")
        if h.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov,
                                        weight_decay=h.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        sched = torch.optim.lr_scheduler
        warmup = None
        if h.warmup_steps > 0:
            if h.warmup_mode == "linear":
                warmup = sched.LinearLR(optimizer, h.warmup_start_factor, 1.0, h.warmup_steps)
            else:
                warmup = sched.ConstantLR(optimizer, h.warmup_start_factor, h.warmup_steps)
        main = self._main_scheduler(optimizer)
        if warmup is not None and main is not None and main["name"] == "cosine" and main["interval"] == "step":
            # warm-up, then the cosine over the remaining steps (its T_max excludes the warm-up)
            main["scheduler"] = sched.SequentialLR(optimizer, [warmup, main["scheduler"]], [h.warmup_steps])
            return [optimizer], [main]
        # Other schedules multiply the warm-up's factor: their milestones count from the start of the run.
        schedulers = [{"scheduler": warmup, "interval": "step", "name": "warmup"}] if warmup is not None else []
        return [optimizer], schedulers + ([main] if main is not None else [])

    def _main_scheduler(self, optimizer: torch.optim.Optimizer) -> dict | None:
        h = self.hparams
        kwargs = dict(h.lr_scheduler_kwargs or {})
        sched = torch.optim.lr_scheduler
        interval = h.lr_scheduler_interval
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
                if "T_max" not in kwargs:
                    interval, kwargs["T_max"] = self._cosine_length()
                scheduler = sched.CosineAnnealingLR(optimizer, **kwargs)
        except TypeError as err:
            raise ValueError(f"model.init_args.lr_scheduler_kwargs {kwargs} do not fit lr_scheduler "
                             f"{h.lr_scheduler!r}: {err}") from err
        return {"scheduler": scheduler, "interval": interval, "name": h.lr_scheduler}

    def _cosine_length(self) -> tuple[str, int]:
        """The cosine's interval and length: the run's epochs when they bound it and the schedule steps per
        epoch, else its optimizer steps after the warm-up."""
        h, trainer = self.hparams, self.trainer
        epochs = trainer.max_epochs
        if h.lr_scheduler_interval == "epoch" and trainer.max_steps == -1 and epochs not in (None, -1):
            return "epoch", max(1, int(epochs))
        total = trainer.estimated_stepping_batches  # max_steps, or max_epochs x batches, whichever ends first
        if not math.isfinite(total):
            raise ValueError("model.init_args.lr_scheduler cosine needs a run of known length: set "
                             "trainer.max_epochs or trainer.max_steps, or lr_scheduler_kwargs.T_max")
        return "step", max(1, int(total) - h.warmup_steps)

    # ---- callbacks, pictures, checkpoints ------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """Callbacks every run gets. Lightning lets these replace the user's callbacks of the same type, so
        checkpointing and the learning-rate monitor are added only where the user configured none."""
        from pytorch_lightning.callbacks import LearningRateMonitor

        from .callbacks import EmptyRankMetrics, FreezeBackbone, MetricsJSONWriter, PredictionWriter

        callbacks: list[Callback] = [MetricsJSONWriter(), EmptyRankMetrics()]
        trainer = self.trainer
        use_atomic_checkpoint_io(trainer)
        if trainer.training:
            existing = trainer.checkpoint_callbacks
            if existing and all(is_lightning_default_checkpoint(cb) for cb in existing):
                h = self.hparams
                callbacks += default_checkpoints(self.monitor, self.monitor_mode, h.checkpoint_every_n_minutes,
                                                 h.checkpoint_every_n_steps)
            if trainer.loggers and not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
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
        """Send an HxWx3 uint8 picture to the loggers that take images (at the global step, so pictures line up
        with the curves) and save it under the run's ``pictures/``."""
        if not self.trainer.is_global_zero:
            return None
        send_picture_to_loggers(self.loggers, tag, picture, self.global_step)
        folder = self.run_dir / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', tag)}_epoch{self.current_epoch:03d}.png"
        save_png(picture, path)
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # who saved it (identity checks), the global generators (an exact resume), and the log run to continue
        info: dict[str, Any] = {"task": type(self).__name__, "rng": collect_rng_states()}
        logger = self.logger if self._trainer is not None else None
        if logger is not None:
            info["log"] = {"logger": type(logger).__name__, "version": logger.version, "name": logger.name,
                           "save_dir": logger.save_dir}
        checkpoint["densecnn"] = info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from pytorch_lightning.trainer.states import TrainerFn

        states = (checkpoint.get("densecnn") or {}).get("rng")
        if states is not None and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            restore_rng_states(states)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's loader, plus: the checkpoint must come from this task (``BaseTask`` loads any task),
        and the backbone's original ``weights`` file is not read again (its tensors are in the checkpoint).
        Local paths, fsspec URLs (``s3://``, ``memory://``, ...) and http(s) URLs are read. An export's
        ``model.safetensors`` (or its directory, ``tasks.model_card``) is rebuilt from the hyper-parameters it holds."""
        from .model_card import exported_weights_file, load_export

        exported = exported_weights_file(checkpoint_path)
        if exported is not None:
            return load_export(cls, exported, map_location=map_location, strict=strict, **kwargs)
        saved = checkpoint_task_name(read_checkpoint(checkpoint_path), checkpoint_path)
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


def checkpoint_task_name(checkpoint: dict[str, Any], path) -> str | None:
    """The task class that saved ``checkpoint`` (None, with a warning, for a checkpoint densecnn did not write)."""
    info = checkpoint.get("densecnn")
    if info is None:
        warnings.warn(f"{path}: not written by densecnn; loading it without checking which task saved it",
                      stacklevel=3)
    return info.get("task") if info else None
