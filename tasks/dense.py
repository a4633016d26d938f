"""Dense prediction with Eigen & Fergus's common multi-scale network (arXiv 1411.4734): depth, surface normals
and semantic labels, alone or together, on any registered backbone as scale 1.

Loss (Sec. 4): ``sum_t loss_weights[t] * L_t`` with L_depth Eq. 6.1 (log depth, lambda = 1/2, gradient term),
L_normals Eq. 6.2 and L_semantic Eq. 6.3, over valid pixels. Predictions are resized (bilinearly) to the
ground truth's size before the loss and the metrics.

Schedules (``training_stage``). The paper trains in two stages: scales 1 and 2 together on the scale-2
output, then scale 3 with scales 1 and 2 fixed. ``scales12`` is the first stage (scale 3 is neither run nor
trained; metrics and predictions are scale 2's) and ``scale3`` the second (the rest frozen, batch norm
included, loss on the scale-3 output; ``init_checkpoint`` brings in the first stage's weights). ``joint``
(default) trains everything at once on the scale-3 output plus ``scale2_loss_weight`` times the same loss on
the scale-2 output, which keeps the first stage's signal in a single run.
"""
from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics import MeanMetric, MetricCollection

from densecnn.constants import IGNORE_LABEL
from densecnn.data import DataError
from densecnn.data.dense import (DenseFolderDataset, DenseSampleDataset, read_labels_png, write_depth_png,
                                 write_labels_png)
from densecnn.errors import ConfigError
from densecnn.heads.dense import (DENSE_TARGETS, INPUT_MAP_CHANNELS, MultiScaleDenseHead, backbone_pool5,
                                  encode_input_map, finish_prediction)
from densecnn.losses import depth_loss, normals_loss, semantic_loss, valid_depth_mask
from densecnn.losses.dense import median_frequency_weights
from densecnn.metrics import DepthMetrics, NormalMetrics, SemanticMetrics
from densecnn.metrics.dense import (DEPTH_CROPS, depth_crop_mask, eigen_crop_mask, per_class_csv,
                                    per_class_markdown, semantic_scores)
from densecnn.viz import confusion_matrix_image, save_png, to_uint8_images
from densecnn.viz_dense import colourise_depth, default_palette, dense_panel, labels_to_rgb, normals_to_rgb, overlay
from densecnn.weights import WeightsError, load_weights

from .base import STAGES, BaseTask, CheckpointError
from .checkpoints import find_last_checkpoint

#: the metric each target is monitored by (checkpointing, plateau schedule): name, mode
MONITORS = {"depth": ("depth/rmse", "min"), "normals": ("normals/mean", "min"), "semantic": ("semantic/miou", "max")}


class DensePredictionTask(BaseTask):
    """Depth, surface normals and semantic labels with the common multi-scale network of Eigen & Fergus
    (arXiv 1411.4734): the scale-invariant log depth loss (Eq. 6.1), the normals dot-product loss (Eq. 6.2),
    pixelwise cross-entropy (Eq. 6.3), the two-stage schedule (Section 3.4), and the standard depth, normals and
    segmentation metrics with the NYU and KITTI evaluation crops.
    """
    monitor = "val/depth/rmse"
    monitor_mode = "min"
    identity_hparams = (*BaseTask.identity_hparams, "targets", "input_maps")

    def __init__(
        self,
        backbone: str = "resnet18",
        targets: list[str] = ["depth"],  # noqa: B006  (jsonargparse needs a plain default)
        num_classes: int | None = None,
        weights: str | None = None,
        class_names: list[str] | None = None,
        loss_weights: dict[str, float] | None = None,
        depth_lambda: float = 0.5,
        depth_gradient_weight: float = 1.0,
        scale2_loss_weight: float = 0.5,
        coarse_pool: tuple[int, int] = (6, 8),
        coarse_hidden: int = 4096,
        coarse_channels: int = 64,
        coarse_size: tuple[int, int] = (14, 19),
        coarse_dropout: float = 0.5,
        scale2_image_channels: int = 96,
        scale2_widths: list[int] = [64, 64, 64],  # noqa: B006
        scale3_image_channels: int = 64,
        scale3_widths: list[int] = [64, 64],  # noqa: B006
        use_scale3: bool = True,
        batch_norm: bool = False,
        input_maps: list[str] = [],  # noqa: B006
        input_map_channels: int = 32,
        training_stage: Literal["joint", "scales12", "scale3"] = "joint",
        init_checkpoint: str | None = None,
        eval_min_depth: float = 1e-3,
        eval_max_depth: float | None = None,
        eigen_crop: bool = False,
        silog_lambda: float = 1.0,
        depth_crop: Literal["none", "nyu_eigen", "kitti_garg", "kitti_eigen"] | None = None,
        median_scaling: bool = False,
        semantic_class_weights: Literal["none", "median_frequency"] = "none",
        **kwargs: Any,
    ):
        """
        Args:
            backbone, weights: scale 1's convolutions (see ``BaseTask``); the paper uses ``alexnet``/``vgg16``.
            targets: any of ``depth``, ``normals``, ``semantic`` (that needs ``num_classes``).
            class_names: filled from the data (``classes.txt``) at fit time and kept in the checkpoint.
            loss_weights: per-target weights of the summed loss (default 1 each).
            depth_lambda, depth_gradient_weight: Eq. 6.1's lambda (1/2) and gradient-term weight (1).
            scale2_loss_weight: weight of the same losses on the scale-2 prediction (0 = final output only).
            coarse_pool, coarse_hidden, coarse_channels, coarse_size, coarse_dropout: scale 1's fully
                connected layers (paper: 4096 units, 64 channels on a 19x14 grid, dropout 0.5). full_s1_6 reads
                the backbone's own pool5 (``densecnn.heads.dense.backbone_pool5``) as a ``coarse_pool`` (H, W)
                map: the identity where pool5 is that size (AlexNet at 304x228: 6x8, the paper's 8x6; VGG:
                7x9), an adaptive average to it otherwise.
            scale2_image_channels, scale2_widths, scale3_image_channels, scale3_widths, use_scale3, batch_norm:
                scales 2 and 3 (``densecnn.heads.MultiScaleDenseHead``).
            input_maps, input_map_channels: ground-truth maps (``depth``, ``normals``) fed to scales 2 and 3
                beside the image, each through its own 9x9 filter bank (the paper's NYU labelling: RGB, depth
                and normals, 32 filters each); every batch, predict included, must then carry those maps.
            training_stage: ``joint``, or the paper's two stages ``scales12`` then ``scale3`` (module docstring).
            init_checkpoint: a checkpoint of this task (same targets and sizes) whose weights initialise the
                model when ``fit`` starts, e.g. the ``scales12`` stage's for the ``scale3`` stage; or a run folder
                (stage 1's ``default_root_dir``): the newest readable ``last*.ckpt`` under it.
            eval_min_depth, eval_max_depth, eigen_crop, silog_lambda: the depth evaluation protocol
                (``densecnn.metrics.DepthMetrics``; NYU: max 10 m and the Eigen crop). Batches carrying the
                full-resolution ground truth (NYU's ``eval_protocol: eigen``) are always scored with the crop and
                a 10 m cap unless ``eval_max_depth`` says otherwise (``update_depth_metrics``).
            depth_crop: the depth evaluation crop by name (``none``, ``nyu_eigen``, ``kitti_garg``,
                ``kitti_eigen``; ``densecnn.metrics.dense.DEPTH_CROPS``). Unset (default): the crop the data
                names in its batches (KITTI's ``depth_crop``), else ``nyu_eigen`` when ``eigen_crop`` is on or the
                batch carries NYU's full-resolution ground truth, else none.
            median_scaling: multiply each predicted depth map by ``median(gt) / median(pred)`` over its valid
                pixels before scoring, for monocular, scale-ambiguous models (Zhou et al. 2017, monodepth2);
                the ratios' median and standard deviation are logged as ``depth/scale_ratio_median`` and
                ``depth/scale_ratio_std``.
            semantic_class_weights: ``none``, or ``median_frequency`` to weight the semantic loss by class
                (Eigen & Fergus 2015, SegNet): computed once when ``fit`` starts from the training split's label
                files (not augmented batches), kept in the checkpoint as the ``class_weights`` buffer.
        """
        targets = list(targets)
        for target in targets:
            if target not in DENSE_TARGETS:
                raise ValueError(f"model.init_args.targets: unknown target {target!r}; targets: "
                                 f"{', '.join(DENSE_TARGETS)}")
        if not targets or len(set(targets)) != len(targets):
            raise ValueError(f"model.init_args.targets must name each target once, got {targets}")
        if "semantic" in targets and (num_classes is None or num_classes < 2):
            raise ValueError("model.init_args.num_classes (>= 2) is needed for the semantic target")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"model.init_args.class_names has {len(class_names)} names for num_classes={num_classes}")
        for name in input_maps:
            if name not in INPUT_MAP_CHANNELS:
                raise ValueError(f"model.init_args.input_maps: unknown map {name!r}; input maps: "
                                 f"{', '.join(INPUT_MAP_CHANNELS)}")
            if name in targets:
                raise ValueError(f"model.init_args.input_maps: {name!r} is also a target; a map cannot be both "
                                 f"an input and a prediction")
        if training_stage not in ("joint", "scales12", "scale3"):
            raise ValueError(f"model.init_args.training_stage: {training_stage!r} is not one of joint, scales12, scale3")
        if training_stage != "joint" and not use_scale3:
            raise ValueError(f"model.init_args.training_stage: {training_stage!r} needs use_scale3: true")
        unknown = set(loss_weights or {}) - set(targets)
        if unknown:
            raise ValueError(f"model.init_args.loss_weights: {sorted(unknown)} are not among the targets {targets}")
        if depth_crop is not None and depth_crop not in DEPTH_CROPS:
            raise ConfigError(f"model.init_args.depth_crop: {depth_crop!r} is not one of {', '.join(DEPTH_CROPS)}")
        if eigen_crop and depth_crop not in (None, "nyu_eigen"):
            raise ConfigError(f"model.init_args.eigen_crop: true (NYU's crop) conflicts with depth_crop: {depth_crop}; "
                              f"set one of them")
        if semantic_class_weights not in ("none", "median_frequency"):
            raise ConfigError(f"model.init_args.semantic_class_weights: {semantic_class_weights!r} is not one of "
                              f"none, median_frequency")
        if semantic_class_weights != "none" and "semantic" not in targets:
            raise ConfigError(f"model.init_args.semantic_class_weights: {semantic_class_weights!r} needs the "
                              f"semantic target (targets: {targets})")
        super().__init__(backbone=backbone, weights=weights, **kwargs)
        if semantic_class_weights != "none":  # a buffer: saved in (and restored from) the checkpoint
            self.register_buffer("class_weights", torch.ones(num_classes))
        monitor, self.monitor_mode = MONITORS[targets[0]]
        self.monitor = f"val/{monitor}"
        self._empty_depth: dict[str, list[str]] = {stage: [] for stage in STAGES}

    @property
    def targets(self) -> list[str]:
        return list(self.hparams.targets)

    # ---- model, losses, metrics ------------------------------------------------------------------------------
    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_backbone(num_classes=0)
        in_chans = (h.backbone_kwargs or {}).get("in_chans", 3)
        self.head = MultiScaleDenseHead(
            self.backbone.feature_info[-1].num_chs, h.targets, h.num_classes, in_chans=in_chans,
            coarse_pool=tuple(h.coarse_pool), coarse_hidden=h.coarse_hidden, coarse_channels=h.coarse_channels,
            coarse_size=tuple(h.coarse_size), coarse_dropout=h.coarse_dropout,
            scale2_image_channels=h.scale2_image_channels, scale2_widths=h.scale2_widths,
            scale3_image_channels=h.scale3_image_channels, scale3_widths=h.scale3_widths, scale3=h.use_scale3,
            batch_norm=h.batch_norm, input_maps=h.input_maps, input_map_channels=h.input_map_channels,
            pool5=backbone_pool5(self.backbone))  # scale 1 reads the backbone's own pool5 (Sec. 3.1)
        if h.training_stage == "scales12":  # stage one: scale 3 waits (and stays out of the optimizer and DDP)
            self.head.scale3.requires_grad_(False)

    def freezes_body(self) -> bool:
        return super().freezes_body() or self.hparams.training_stage == "scale3"

    def body_modules(self) -> list[torch.nn.Module]:
        """Stage two (``scale3``) freezes scale 1's fully connected layers and scale 2 with the backbone."""
        modules = super().body_modules()
        if self.hparams.training_stage == "scale3":
            modules += [m for part in (self.head.scale1, self.head.scale2) for m in part.modules()
                        if not list(m.children())]
        return modules

    def head_modules(self) -> list[torch.nn.Module]:
        return [self.head.scale3] if self.hparams.training_stage == "scale3" else [self.head]

    def loss_weight(self, target: str) -> float:
        return float((self.hparams.loss_weights or {}).get(target, 1.0))

    def configure_metrics(self) -> None:
        super().configure_metrics()
        # each target's loss as a sample-weighted mean, exact under DDP like BaseTask's total loss
        self.target_loss_means = nn.ModuleDict({f"{stage}_{target}": MeanMetric() for stage in STAGES
                                                for target in self.hparams.targets})

    def log_metrics_without_batches(self, stage: str) -> None:
        if self.loss_means[f"{stage}_loss"].update_count == 0:
            for target in self.targets:  # in the order the step logs them
                self.log(f"{stage}/loss_{target}", self.target_loss_means[f"{stage}_{target}"], on_step=False,
                         on_epoch=True, batch_size=1)
        super().log_metrics_without_batches(stage)

    def make_metrics(self) -> MetricCollection:
        h = self.hparams
        parts = []
        if "depth" in h.targets:
            parts.append(DepthMetrics(prefix="depth/", median_scaling=h.median_scaling))
        if "normals" in h.targets:
            parts.append(NormalMetrics(prefix="normals/"))
        if "semantic" in h.targets:
            parts.append(SemanticMetrics(h.num_classes, prefix="semantic/"))
        return MetricCollection(parts, compute_groups=False)

    def _depth_options(self) -> dict[str, Any]:
        h = self.hparams
        return dict(min_depth=h.eval_min_depth, max_depth=h.eval_max_depth, silog_lambda=h.silog_lambda,
                    median_scaling=h.median_scaling)

    def depth_crop_for(self, batch: dict, full_resolution: bool) -> str:
        """The evaluation crop: ``depth_crop`` when set, else the crop the data names (``batch["depth_crop"]``,
        KITTI), else ``nyu_eigen`` with ``eigen_crop`` or NYU's full-resolution ground truth, else ``none``."""
        h = self.hparams
        if h.depth_crop is not None:
            return h.depth_crop
        named = batch.get("depth_crop")
        if named:
            return named[0] if isinstance(named, (list, tuple)) else str(named)
        return "nyu_eigen" if h.eigen_crop or full_resolution else "none"

    def setup(self, stage: str) -> None:
        if "semantic" in self.targets:
            self.sync_class_names()  # num_classes must match the data's classes.txt; the names go in the checkpoint
        if stage == "fit" and self.hparams.init_checkpoint:
            # before the optimizers exist; a resumed run (--ckpt_path) restores its own weights afterwards
            try:
                load_weights(self, self.init_checkpoint_file(), whole_task=True)
            except WeightsError as err:
                raise CheckpointError(f"model.init_args.init_checkpoint: {err}") from err
        if stage == "fit" and hasattr(self, "class_weights") and not self.trainer.ckpt_path:
            # once per run: a resumed run (--ckpt_path) gets the buffer back from its checkpoint
            self.class_weights.copy_(self.training_class_weights())

    def init_checkpoint_file(self) -> Path:
        """``init_checkpoint`` as a file: a directory (a run root such as stage 1's ``default_root_dir``) stands
        for the newest readable ``last*.ckpt`` under it, found as ``--ckpt_path last`` finds one."""
        given = Path(self.hparams.init_checkpoint)
        if not given.is_dir():
            return given
        found = find_last_checkpoint([given])
        if found is None:
            raise CheckpointError(f"model.init_args.init_checkpoint: {given} is a folder without a last*.ckpt "
                                  f"(has the run it names finished its first epoch?)")
        rank_zero_info(f"model.init_args.init_checkpoint: {given} -> {found}")
        return found

    def training_class_weights(self) -> torch.Tensor:
        """Median-frequency weights (``median_frequency_weights``) of the training split's stored labels."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        if dataset is None:
            raise ConfigError("model.init_args.semantic_class_weights: median_frequency needs a DataModule with a "
                              "train_set (its label files give the class frequencies)")
        try:
            weights = median_frequency_weights(stored_label_maps(dataset), self.hparams.num_classes)
        except ValueError as err:
            raise DataError(f"training labels of {getattr(datamodule, 'root', dataset)}: {err}") from err
        if self.trainer.is_global_zero:
            names = self.class_names
            print("semantic loss class weights (median frequency): "
                  + ", ".join(f"{names[c]}={w:.3g}" for c, w in enumerate(weights.tolist())))
        return weights

    # ---- forward passes ----------------------------------------------------------------------------------------
    def input_maps_from(self, batch: dict) -> dict[str, torch.Tensor] | None:
        """The ``input_maps`` of a batch, encoded for the network (``encode_input_map``); None when there are none."""
        names = self.hparams.input_maps
        if not names:
            return None
        missing = [name for name in names if name not in batch]
        if missing:
            raise DataError(f"model.init_args.input_maps needs the {', '.join(missing)} map(s) in every batch, "
                            f"predict included; this batch has {sorted(batch)}")
        return {name: encode_input_map(name, batch[name]) for name in names}

    def forward_scales(self, images: torch.Tensor, maps: dict[str, torch.Tensor] | None = None
                       ) -> list[dict[str, torch.Tensor]]:
        """Raw per-scale outputs: log depth, unit normals, class scores, at 1/4 and 1/2 resolution; ``maps``: the
        encoded input maps, when the network takes any."""
        return self.head.forward_scales(images, self.backbone.forward_features(images)[-1], maps,
                                        through_scale3=self.hparams.training_stage != "scales12")

    def compile_targets(self) -> list[tuple[torch.nn.Module, str]]:
        """The whole network, ``forward_scales`` (scale 1's backbone and fully connected layers, scales 2 and 3):
        the three scales' convolutions and upsampling fuse into one graph."""
        return [(self, "forward_scales")]

    @staticmethod
    def resize_output(target: str, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return finish_prediction(target, x)

    def forward(self, images: torch.Tensor, maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Predictions at the input's size: ``depth`` (N, H, W) metres, ``normals`` (N, 3, H, W) unit vectors,
        ``semantic`` (N, C, H, W) class scores; ``maps`` as ``input_maps_from`` gives them."""
        final = self.forward_scales(images, maps)[-1]
        out = {t: self.resize_output(t, final[t], images.shape[-2:]) for t in self.targets}
        if "depth" in out:
            out["depth"] = out["depth"][:, 0].exp()
        return out

    # ---- training step -----------------------------------------------------------------------------------------
    def _check_batch(self, batch: dict) -> None:
        names = batch.get("name", [])
        for target in self.targets:
            if target not in batch:
                raise DataError(f"the batch has no {target!r} ground truth (keys: {sorted(batch)}); the data must "
                                f"provide a map for every target in model.init_args.targets")
        if "semantic" in self.targets:
            labels = batch["semantic"]
            bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= self.hparams.num_classes))
            if bool(bad.any()):
                which = [names[i] if i < len(names) else str(i) for i in bad.flatten(1).any(1).nonzero().flatten().tolist()]
                raise DataError(f"labels outside 0..{self.hparams.num_classes - 1} (255 = ignore) in sample(s) "
                                f"{', '.join(which[:10])}: values {labels[bad].unique()[:10].tolist()}")

    def target_loss(self, target: str, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        h = self.hparams
        if target == "depth":
            return depth_loss(prediction, batch["depth"], lam=h.depth_lambda, gradient_weight=h.depth_gradient_weight)
        if target == "normals":
            return normals_loss(prediction, batch["normals"])
        return semantic_loss(prediction, batch["semantic"], weight=getattr(self, "class_weights", None))

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_batch(batch)
        images = batch["image"]
        scales = self.forward_scales(images, self.input_maps_from(batch))
        if "depth" in self.targets:
            empty = valid_depth_mask(batch["depth"]).flatten(1).sum(1) == 0
            if bool(empty.any()):
                names = batch.get("name") or [str(i) for i in range(len(empty))]
                self._empty_depth[stage].extend(names[i] for i in empty.nonzero().flatten().tolist())
        total = images.new_zeros(())
        outputs = {}
        for target in self.targets:
            size = batch[target].shape[-2:]
            final = self.resize_output(target, scales[-1][target], size)
            loss = self.target_loss(target, final, batch)
            if len(scales) > 1 and self.hparams.scale2_loss_weight and self.hparams.training_stage == "joint":
                coarse = self.resize_output(target, scales[0][target], size)
                loss = loss + self.hparams.scale2_loss_weight * self.target_loss(target, coarse, batch)
            mean = self.target_loss_means[f"{stage}_{target}"]
            mean(loss.detach(), weight=len(images))
            self.log(f"{stage}/loss_{target}", mean, on_step=False, on_epoch=True, batch_size=len(images))
            total = total + self.loss_weight(target) * loss
            outputs[target] = final.detach()
        return total, outputs

    def metric_members(self, stage: str) -> dict[str, dict[str, Any]]:
        """The stage's metric objects as ``{target: {key: metric}}``."""
        members: dict[str, dict] = {}
        for key, metric in self.metrics_for(stage).items(keep_base=True, copy_state=False):
            target, name = key.split("/", 1)
            members.setdefault(target, {})[name] = metric
        return members

    def update_metrics(self, stage: str, outputs: dict[str, torch.Tensor], batch: dict) -> None:
        members = self.metric_members(stage)
        if "depth" in outputs:
            self.update_depth_metrics(members["depth"], outputs["depth"][:, 0].exp(), batch)
        if "normals" in outputs:
            NormalMetrics.update_members(members["normals"], outputs["normals"], batch["normals"])
        if "semantic" in outputs:
            SemanticMetrics.update_members(members["semantic"], outputs["semantic"], batch["semantic"])

    def update_depth_metrics(self, members: dict[str, Any], pred: torch.Tensor, batch: dict) -> None:
        """Score ``pred`` (N, H, W) metres, the prediction at the network's input size.

        * Batches with ``depth_full`` (NYU's ``eval_protocol: eigen``, KITTI) follow the standard protocol (Eigen
          et al. 2014, as BTS / monodepth2 evaluate): ``pred`` is upsampled bilinearly onto the part of the
          full-resolution frame it covers (``depth_window``) and scored there inside the crop
          (``depth_crop_for``; computed on each frame's own size, ``depth_full_size``, when frames of several
          sizes were padded into one batch), with ground truth and predictions capped to [``eval_min_depth``,
          ``eval_max_depth``]; an unset cap is the data's (``depth_max``, KITTI's 80 m) or NYU's 10 m.
        * Otherwise against ``batch["depth"]``; the NYU crop is placed by ``depth_window`` when the batch has
          one (a centre-cropped evaluation map is not the whole frame), other crops are fractions of the map.
        """
        options = self._depth_options()
        window = batch.get("depth_window")
        full = "depth_full" in batch
        crop = self.depth_crop_for(batch, full)
        if full:
            target = batch["depth_full"]
            pred, mask = paste_into_frame(pred, window, target.shape[-2:])
            if options["max_depth"] is None:
                options["max_depth"] = float(batch["depth_max"][0]) if "depth_max" in batch else NYU_MAX_DEPTH
            if crop != "none":
                sizes = batch.get("depth_full_size")
                crops = [frame_crop_mask(crop, target.shape[-2:], None if sizes is None else sizes[i])
                         for i in range(len(target))]
                mask = mask & torch.stack(crops).to(mask.device)
            DepthMetrics.update_members(members, pred, target, mask, **options)
            return
        target, mask = batch["depth"], None
        if crop == "nyu_eigen" and window is not None:
            mask = torch.stack([eigen_crop_mask(*target.shape[-2:], device=target.device, window=w.tolist())
                                for w in window])
            crop = "none"
        DepthMetrics.update_members(members, pred, target, mask, crop=crop, **options)

    def _report_empty_depth(self, stage: str) -> None:
        names = self._empty_depth[stage]
        self._empty_depth[stage] = []
        if "depth" not in self.targets or self.trainer.sanity_checking:
            return
        self.log(f"{stage}/empty_depth_samples", float(len(names)), on_epoch=True, reduce_fx="sum", sync_dist=True)
        if names:
            warnings.warn(f"{stage}: {len(names)} sample(s) without any valid depth pixel contributed nothing to the "
                          f"depth loss and metrics: {', '.join(sorted(set(names))[:20])}"
                          + (" ..." if len(set(names)) > 20 else ""), stacklevel=2)

    def on_train_epoch_end(self) -> None:
        self._report_empty_depth("train")

    def on_validation_epoch_end(self) -> None:
        self._report_empty_depth("val")

    def on_test_epoch_end(self) -> None:
        self._report_empty_depth("test")
        if "semantic" in self.targets and not self.trainer.sanity_checking:
            confusion = SemanticMetrics.synced_confusion(self.metric_members("test")["semantic"])  # every rank
            if self.trainer.is_global_zero:
                self.write_semantic_report("test", confusion)

    def write_semantic_report(self, stage: str, confusion: torch.Tensor) -> dict[str, Path]:
        """``<run dir>/<stage>_semantic_per_class.csv`` and ``.md`` (class, IoU, accuracy, true and predicted
        pixels: the very values the metric averages into ``miou``/``mean_acc``), ``<stage>_confusion_matrix.csv``
        (raw pixel counts, rows true) and the ``<stage>/confusion_matrix`` picture."""
        names = self.class_names
        rows = SemanticMetrics.per_class_table(confusion, names)
        scores = {k: float(v) for k, v in semantic_scores(confusion).items() if k in ("miou", "mean_acc")}
        means = {"iou": scores["miou"], "acc": scores["mean_acc"]}
        folder = self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"csv": folder / f"{stage}_semantic_per_class.csv",
                 "markdown": folder / f"{stage}_semantic_per_class.md",
                 "confusion_csv": folder / f"{stage}_confusion_matrix.csv"}
        paths["csv"].write_text(per_class_csv(rows))
        paths["markdown"].write_text(per_class_markdown(rows, {k: (None if v <= -1 else v) for k, v in means.items()}))
        with open(paths["confusion_csv"], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            for name, row in zip(names, confusion.tolist()):
                writer.writerow([name, *row])
        picture = confusion_matrix_image(confusion.numpy(), names)
        paths["picture"] = self.log_picture(f"{stage}/confusion_matrix", picture)
        print(f"per-class IoU/accuracy written to {paths['csv']} and {paths['markdown']}; confusion matrix in "
              f"{paths['confusion_csv']} and {paths['picture']}")
        return paths

    # ---- pictures ----------------------------------------------------------------------------------------------
    def palette(self) -> np.ndarray:
        return default_palette(max(self.hparams.num_classes or 1, 1))

    def _as_maps(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Network outputs -> displayable maps: depth in metres, unit normals, label ids."""
        maps = {}
        for target, value in outputs.items():
            if target == "depth":
                maps[target] = value[:, 0].exp() if value.dim() == 4 else value
            elif target == "semantic":
                maps[target] = value.argmax(1) if value.dim() == 4 else value
            else:
                maps[target] = value
        return {k: v.detach().float().cpu() if k != "semantic" else v.detach().cpu() for k, v in maps.items()}

    def log_examples(self, stage: str, batch: dict, outputs: dict[str, torch.Tensor]) -> None:
        n = min(self.hparams.num_log_images, len(batch["image"]), 8)
        images = to_uint8_images(batch["image"][:n].cpu(), *self.normalisation())
        maps = self._as_maps({k: v[:n] for k, v in outputs.items()})
        truth = {t: batch[t][:n].cpu() for t in self.targets if t in batch}
        self.log_picture(f"{stage}/examples", dense_panel(images, maps, truth, self.palette()))

    # ---- export ------------------------------------------------------------------------------------------------
    OUTPUT_UNITS = {"depth": "metres (N, H, W): exp of the network's log depth, not clamped",
                    "normals": "unit surface normals (N, 3, H, W), camera coordinates (x, y, z)",
                    "semantic": "class scores (N, num_classes, H, W): logits, before softmax; argmax gives the label"}
    INPUT_MAP_UNITS = {"depth": "metres (N, H, W); 0 or non-finite where missing",
                       "normals": "unit surface normals (N, 3, H, W); 0 or NaN where missing"}

    def export_spec(self, *, dynamic_batch: bool = True):
        """The three-scale network at the evaluation size, outputs at the input's size in physical units
        (``OUTPUT_UNITS``): ``image`` (N, 3, H, W) normalised RGB, then each of ``input_maps`` as an extra input
        in metres / unit vectors (encoded inside the graph as in training) -> one output per target."""
        from densecnn.export import ExportSpec
        from densecnn.export.modules import DenseOutputs

        from .export import attached_datamodule, backbone_input_size, example_images, image_preprocess

        datamodule = attached_datamodule(self)
        transform = getattr(datamodule, "eval_transform", None)
        steps = None
        if transform is not None and hasattr(transform, "size"):  # DenseAugment: resize, then the optional crop
            size = tuple(transform.size)
            steps = [{"op": "resize", "size": list(size), "interpolation": "area when shrinking, else bilinear"}]
            if transform.eval_crop:
                size = tuple(min(c, s) for c, s in zip(transform.crop_size, size))
                steps.append({"op": "center_crop", "size": list(size)})
        else:
            size = backbone_input_size(self)
        maps = list(self.hparams.input_maps)
        generator = torch.Generator().manual_seed(1)
        extra = {"depth": lambda: torch.rand(2, *size, generator=generator) * 9 + 0.5,
                 "normals": lambda: F.normalize(torch.randn(2, 3, *size, generator=generator), dim=1)}
        in_chans = (self.hparams.backbone_kwargs or {}).get("in_chans", 3)
        example = (example_images(in_chans, *size), *(extra[name]() for name in maps))
        preprocess = {**image_preprocess(self, size, steps), "targets": self.targets,
                      "input_maps": {name: self.INPUT_MAP_UNITS[name] for name in maps},
                      "units": {t: ("metres" if t == "depth" else "unit vectors" if t == "normals" else "logits")
                                for t in self.targets},
                      "outputs": {t: self.OUTPUT_UNITS[t] for t in self.targets}}
        if "semantic" in self.targets:
            preprocess["class_names"] = self.class_names
        return ExportSpec(DenseOutputs(self, self.targets, maps).eval(), example, ["image", *maps],
                          list(self.targets), dynamic_batch=dynamic_batch, preprocess=preprocess,
                          inputs_from_batch=lambda batch: (batch["image"], *(batch[name] for name in maps)))

    # ---- predict -----------------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        out = self(batch["image"], self.input_maps_from(batch))
        if "semantic" in out:
            out["semantic"] = out["semantic"].argmax(1)
        return out

    def predict_image(self, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, depth: np.ndarray | None = None,
                      normals: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Predict one HxWx3 uint8 image (normalised with ``mean``/``std``, ImageNet's by default) or a normalised
        CHW tensor; returns numpy maps (depth metres, normals (H, W, 3), semantic ids). For notebooks.
        ``depth`` (H, W) metres and ``normals`` (H, W, 3): the input maps, when the network takes them."""
        from densecnn.data.dense import DenseSample, sample_to_tensors
        from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        rgb = image if isinstance(image, np.ndarray) else np.zeros((*image.shape[-2:], 3), np.uint8)
        batch = sample_to_tensors(DenseSample(rgb, depth=depth, normals=normals), mean or IMAGENET_MEAN,
                                  std or IMAGENET_STD)
        if not isinstance(image, np.ndarray):
            batch["image"] = image
        batch = {k: v.unsqueeze(0).to(self.device) for k, v in batch.items()}
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self.predict_step(batch, 0)
        self.train(was_training)
        result = {k: v[0].cpu().numpy() for k, v in out.items()}
        if "normals" in result:
            result["normals"] = result["normals"].transpose(1, 2, 0)
        return result

    def prediction_records(self, prediction: dict, batch: dict, out_dir: Path, batch_idx: int) -> list[dict]:
        """Per sample: ``depth/<name>.png`` (uint16 mm) and ``depth_colour/``, ``normals/<name>.png`` (RGB),
        ``labels/<name>.png`` (indexed, with palette) and ``overlay/``."""
        images = to_uint8_images(batch["image"].cpu(), *self.normalisation())
        palette = self.palette()
        records = []
        for i, name in enumerate(batch["name"]):
            record = {"name": name, "source": batch["path"][i]}
            if "depth" in prediction:
                depth = prediction["depth"][i].float().cpu().numpy()
                record["depth"] = self._save(out_dir, "depth", name, lambda p: write_depth_png(depth, p))
                record["depth_colour"] = self._save(out_dir, "depth_colour", name,
                                                    lambda p: save_png(colourise_depth(depth), p))
            if "normals" in prediction:
                rgb = normals_to_rgb(prediction["normals"][i])
                record["normals"] = self._save(out_dir, "normals", name, lambda p: save_png(rgb, p))
            if "semantic" in prediction:
                labels = prediction["semantic"][i].cpu().numpy()
                record["labels"] = self._save(out_dir, "labels", name, lambda p: write_labels_png(labels, p, palette))
                blend = overlay(images[i], labels_to_rgb(labels, palette))
                record["overlay"] = self._save(out_dir, "overlay", name, lambda p: save_png(blend, p))
            records.append(record)
        return records

    @staticmethod
    def _save(out_dir: Path, folder: str, name: str, write) -> str:
        path = out_dir / folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return str(path.relative_to(out_dir))

    def save_predictions(self, records: Sequence[dict], out_dir: Path) -> Path:
        path = out_dir / "predictions.csv"
        columns = ["name", "source"] + [c for c in ("depth", "depth_colour", "normals", "labels", "overlay")
                                        if any(c in r for r in records)]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for record in sorted(records, key=lambda r: r["name"]):
                writer.writerow({c: record.get(c, "") for c in columns})
        if "semantic" in self.targets:
            (out_dir / "classes.txt").write_text("\n".join(self.class_names) + "\n")
        return path


#: the depth cap of the standard NYU evaluation (Eigen et al. 2014; BTS, monodepth2): 10 m
NYU_MAX_DEPTH = 10.0


def frame_crop_mask(crop: str, canvas: Sequence[int], size: torch.Tensor | None) -> torch.Tensor:
    """The evaluation ``crop`` of a frame of ``size`` (height, width), its ground truth's own size, placed at
    the top-left of the ``canvas`` (height, width) it was padded into (``densecnn.data.kitti.collate_kitti``);
    ``size`` None: the frame is the canvas."""
    height, width = (int(v) for v in canvas)
    h, w = (height, width) if size is None else (int(size[0]), int(size[1]))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:h, :w] = depth_crop_mask(crop, h, w)
    return mask


def paste_into_frame(pred: torch.Tensor, window: torch.Tensor | None, size: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, h, w) depth -> (N, H, W) frame of ``size`` with each image upsampled bilinearly onto its
    ``window`` (N, 4) = (top, bottom, left, right) in frame pixels (None: the whole frame), and the mask of the
    pixels it covers; the rest of the frame is 0 and not covered."""
    height, width = int(size[0]), int(size[1])
    frame = pred.new_zeros(len(pred), height, width)
    covered = torch.zeros(len(pred), height, width, dtype=torch.bool, device=pred.device)
    for i in range(len(pred)):
        top, bottom, left, right = ((0, height, 0, width) if window is None
                                    else (int(round(float(v))) for v in window[i]))
        frame[i, top:bottom, left:right] = F.interpolate(pred[i][None, None].float(), size=(bottom - top, right - left),
                                                         mode="bilinear", align_corners=False)[0, 0]
        covered[i, top:bottom, left:right] = True
    return frame, covered


def stored_label_maps(dataset) -> Iterator[np.ndarray]:
    """Every sample's label map as stored on disk (before resizing and augmentation), in dataset order: read
    straight from ``labels/*.png`` for the folder format, else from the dataset's untransformed ``load`` with
    only the labels requested (NYU's .mat file). A ``torch.utils.data.Subset`` is followed to its samples."""
    indices: Sequence[int] = range(len(dataset))
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, dataset.indices
    if isinstance(dataset, DenseFolderDataset):
        for i in indices:
            yield read_labels_png(dataset.map_path("semantic", dataset.rgb_paths[i]))
    elif isinstance(dataset, DenseSampleDataset) and hasattr(dataset, "maps"):
        labels_only = copy.copy(dataset)  # a view that skips depth and normals (no plane fits for NYU)
        labels_only.maps, labels_only.derive_normals = ["semantic"], False
        for i in indices:
            yield labels_only.load(i).semantic
    else:
        raise ConfigError(f"model.init_args.semantic_class_weights: cannot read the stored labels of a "
                          f"{type(dataset).__name__}; use a DenseFolderDataset or NYUDepthV2Dataset")


# ---- trivial baselines -------------------------------------------------------------------------------------------
def trivial_baselines(train_set, eval_set, targets: Sequence[str], num_classes: int | None = None,
                      batch_size: int = 32) -> dict[str, float]:
    """Metrics of the constant predictions a model must beat, fitted on ``train_set`` and scored on ``eval_set``
    with the task's metrics: depth = the training mean depth (valid pixels), normals = the most common training
    normal (the mean of the most populated cell of a 0.2-wide grid over unit vectors), semantic = the majority
    training class."""
    from torch.utils.data import DataLoader

    sums = {"depth": 0.0, "depth_n": 0, "counts": None, "normals": []}
    for batch in DataLoader(train_set, batch_size=batch_size):
        if "depth" in targets:
            valid = valid_depth_mask(batch["depth"])
            sums["depth"] += float(batch["depth"][valid].double().sum())
            sums["depth_n"] += int(valid.sum())
        if "normals" in targets:
            n = batch["normals"].permute(0, 2, 3, 1).reshape(-1, 3)
            sums["normals"].append(n[n.norm(dim=1) > 0.5])
        if "semantic" in targets:
            labels = batch["semantic"][batch["semantic"] != IGNORE_LABEL]
            counts = torch.bincount(labels.flatten(), minlength=num_classes)
            sums["counts"] = counts if sums["counts"] is None else sums["counts"] + counts
    constant: dict[str, torch.Tensor] = {}
    if "depth" in targets:
        constant["depth"] = torch.tensor(sums["depth"] / max(sums["depth_n"], 1))
    if "normals" in targets:
        normals = torch.cat(sums["normals"])
        cells, inverse = torch.unique(torch.round(normals / 0.2).long(), dim=0, return_inverse=True)
        mode = torch.bincount(inverse).argmax()
        constant["normals"] = F.normalize(normals[inverse == mode].mean(0), dim=0)
    if "semantic" in targets:
        constant["semantic"] = sums["counts"].argmax()
    metrics = {}
    if "depth" in targets:
        metrics["depth"] = DepthMetrics()
    if "normals" in targets:
        metrics["normals"] = NormalMetrics()
    if "semantic" in targets:
        metrics["semantic"] = SemanticMetrics(num_classes)
    for batch in DataLoader(eval_set, batch_size=batch_size):
        if "depth" in targets:
            metrics["depth"].update(torch.full_like(batch["depth"], float(constant["depth"])), batch["depth"])
        if "normals" in targets:
            pred = constant["normals"].view(1, 3, 1, 1).expand_as(batch["normals"])
            metrics["normals"].update(pred, batch["normals"])
        if "semantic" in targets:
            metrics["semantic"].update(torch.full_like(batch["semantic"], int(constant["semantic"])), batch["semantic"])
    return {f"{target}/{key}": float(value) for target, metric in metrics.items()
            for key, value in metric.compute().items()}
