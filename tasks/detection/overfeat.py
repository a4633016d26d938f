"""OverFeat (Sermanet et al. 2014; S3 L3928-3997): "examine every position and scale".

The classifier's fully connected layers are convolutions (``ConvWindowHead``): trained on single
``window``-pixel crops (where the head's output is 1 x 1), the same network applied to a whole image
gives a map of class scores, one per window position, in one forward pass ("no need to compute separate
windows, just one big input window"). An image pyramid (``scales``) covers object sizes; the
class-specific regression outputs of the same head refine each window's box; the windows of all scales
are merged with per-class NMS (torchvision ``batched_nms``), where OverFeat used its own greedy merging.

Training samples positive and negative windows from the ground truth: jittered copies of each object box
(IoU >= ``fg_iou`` with it) and random windows, 25% foreground per image, each window cropped and warped
to ``window`` x ``window``; the loss is the softmax log loss plus smooth L1 on the foreground windows'
class-specific box deltas.

Window geometry: score-map position (i, j) at pyramid scale f looks at the input square of side
``window`` whose corner is at (j, i) * stride, that is ``window / f`` image pixels at (j, i) * stride / f.
With an unpadded (valid-convolution) backbone such as ``lenet5`` the dense scores equal those of the
cropped windows exactly (``benchmarks/detection.py`` checks it); padded backbones see some context.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from densecnn.backbones import get_entry
from densecnn.heads.detection import (ConvWindowHead, detection_loss, freeze_batchnorm, postprocess_detections,
                                      sample_rois, set_trainable_stages, warp_regions, window_grid)

from .base import DetectionTask


class OverFeatTask(DetectionTask):
    def __init__(
        self,
        backbone: str = "alexnet",
        num_classes: int = 20,
        weights: str | None = None,
        feature_index: int = -1,
        window: int | None = None,
        scales: Sequence[float] = (1.0,),
        hidden_dim: int = 1024,
        dropout: float = 0.5,
        windows_per_image: int = 64,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        jitter: float = 0.15,
        frozen_bn: bool = False,
        trainable_stages: int | None = None,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img: ``DetectionTask``.
            feature_index: the ``feature_info`` map the convolutional classifier slides over.
            window: the window side in pixels (the backbone's input size by default: 227 for AlexNet); its
                feature map must be square.
            scales: the image pyramid, factors applied to the input image (>1 finds smaller objects).
            hidden_dim, dropout: width of the fc6/fc7 convolutions, and their dropout.
            windows_per_image, fg_fraction, fg_iou: training windows sampled per image, 25% foreground.
            jitter: positive windows are object boxes shifted and scaled by up to this fraction.
            frozen_bn, trainable_stages: as ``FasterRCNNTask``.
        """
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"model.init_args.scales must be positive factors, got {list(scales)}")
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_backbone(num_classes=0)
        if h.frozen_bn:
            freeze_batchnorm(self.backbone)
        set_trainable_stages(self.backbone, h.trainable_stages)
        self.freeze_unused_backbone([h.feature_index])
        entry = get_entry(h.backbone)
        self.window = int(h.window or entry.input_size[-1])
        in_chans = int((h.backbone_kwargs or {}).get("in_chans", entry.input_size[0]))
        info = self.backbone.feature_info[h.feature_index]
        self.stride = info.reduction
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():  # the window's feature-map size: the fully connected layer's kernel
            probe = self.backbone.forward_features(torch.zeros(1, in_chans, self.window, self.window))
        self.backbone.train(was_training)
        cells = probe[h.feature_index].shape[-2:]
        if cells[0] != cells[1] or cells[0] < 1:
            raise ValueError(f"a {self.window} px window gives a {tuple(cells)} feature map on {h.backbone}; "
                             f"choose a window that gives a square one")
        self.head = ConvWindowHead(info.num_chs, int(cells[0]), h.num_classes, h.hidden_dim, h.dropout)

    def head_modules(self) -> list:
        return [self.head]

    # ---- the two ways of scoring windows -----------------------------------------------------------------
    def score_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over whole images: logits ``(B, K + 1, rows, cols)`` and deltas ``(B, 4K, rows, cols)``,
        one per window position (see ``window_boxes``)."""
        return self.head(self.backbone.forward_features(images)[self.hparams.feature_index])

    def window_boxes(self, rows: int, cols: int, scale: float = 1.0, device=None) -> torch.Tensor:
        """The windows behind a score map, in the pixels of the image before the pyramid's scaling."""
        return window_grid(rows, cols, self.stride, self.window, device) / scale

    def score_windows(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify ``window``-sized crops one by one as a plain classifier would: ``(N, K + 1)``, ``(N, 4K)``."""
        logits, deltas = self.score_maps(crops)
        return logits.flatten(1), deltas.flatten(1)

    # ---- training ----------------------------------------------------------------------------------------
    def candidate_windows(self, gt_boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Jittered object boxes (positives) and random windows (mostly negatives) for one image."""
        h = self.hparams
        device = gt_boxes.device
        parts = []
        if len(gt_boxes):
            boxes = gt_boxes.repeat(8, 1)
            w, hh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            shift = (torch.rand(len(boxes), 2, device=device) * 2 - 1) * h.jitter
            grow = 1 + (torch.rand(len(boxes), 1, device=device) * 2 - 1) * h.jitter
            cx = (boxes[:, 0] + boxes[:, 2]) / 2 + shift[:, 0] * w
            cy = (boxes[:, 1] + boxes[:, 3]) / 2 + shift[:, 1] * hh
            parts.append(torch.stack([cx - w * grow[:, 0] / 2, cy - hh * grow[:, 0] / 2,
                                      cx + w * grow[:, 0] / 2, cy + hh * grow[:, 0] / 2], dim=1))
        count = 4 * h.windows_per_image
        side = torch.empty(count, device=device).uniform_(0.1, 0.7) * min(height, width)
        aspect = torch.empty(count, device=device).uniform_(-0.5, 0.5).exp()
        bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
        x0 = torch.rand(count, device=device) * (width - bw).clamp(min=1)
        y0 = torch.rand(count, device=device) * (height - bh).clamp(min=1)
        parts.append(torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1))
        return torch.cat(parts)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        h = self.hparams
        height, width = batch["image"].shape[-2:]
        windows, labels, targets = [], [], []
        for target in batch["target"]:
            candidates = self.candidate_windows(target["boxes"], height, width)
            w, l, t = sample_rois(candidates, target["boxes"], target["labels"], batch_size=h.windows_per_image,
                                  fg_fraction=h.fg_fraction, fg_iou=h.fg_iou, bg_iou=(0.0, h.fg_iou))
            windows.append(w), labels.append(l), targets.append(t)
        crops = warp_regions(batch["image"], windows, self.window)
        logits, deltas = self.score_windows(crops)
        deltas = torch.cat([deltas.new_zeros((len(deltas), 4)), deltas], dim=1)  # no box for background
        cls_loss, box_loss = detection_loss(logits, deltas, torch.cat(labels), torch.cat(targets))
        return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}

    # ---- detection ---------------------------------------------------------------------------------------
    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        h = self.hparams
        size = tuple(images.shape[-2:])
        per_image: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in images]
        for scale in h.scales:
            scaled = images if scale == 1 else F.interpolate(images, scale_factor=float(scale), mode="bilinear",
                                                             align_corners=False)
            if min(scaled.shape[-2:]) < self.window:
                continue  # the image is smaller than one window at this scale
            logits, deltas = self.score_maps(scaled)
            rows, cols = logits.shape[-2:]
            boxes = self.window_boxes(rows, cols, float(scale), images.device)
            for i in range(len(images)):
                scores = logits[i].flatten(1).T.softmax(dim=1)
                d = deltas[i].flatten(1).T
                per_image[i].append((scores, torch.cat([d.new_zeros((len(d), 4)), d], dim=1), boxes))
        detections = []
        for parts in per_image:
            if not parts:
                empty = images.new_zeros((0,))
                detections.append({"boxes": images.new_zeros((0, 4)), "scores": empty,
                                   "labels": empty.long()})
                continue
            scores, deltas, boxes = (torch.cat(v) for v in zip(*parts))
            detections.append(postprocess_detections(scores, deltas, boxes, size, score_thresh=h.score_thresh,
                                                     nms_thresh=h.nms_thresh,
                                                     detections_per_img=h.detections_per_img))
        return detections
