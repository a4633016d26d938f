"""OverFeat (Sermanet et al. 2014; S3 L3928-3997): "examine every position and scale".

The classifier's fully connected layers are convolutions (``ConvWindowHead``): trained on single
``window``-pixel crops (where the head's output is 1 x 1), the same network applied to a whole image
gives a map of class scores, one per window position, in one forward pass ("no need to compute separate
windows, just one big input window"). An image pyramid (``scales``) covers object sizes; the
class-specific regression outputs of the same head refine each window's box; the windows of all scales
are merged with per-class NMS (torchvision ``batched_nms``), where OverFeat used its own greedy merging.

Training follows the same path as detection: the pyramid's score maps are computed for the whole image
and the loss is taken on windows sampled from them, ``windows_per_image`` per image with up to 25%
foreground (IoU >= ``fg_iou`` with an object, labelled with its class) and the rest background: the
softmax log loss plus smooth L1 on the foreground windows' class-specific box deltas. With a valid-convolution
backbone this equals training on each window cropped separately (OverFeat trained on crops), at the cost
of one pass per scale, and the classifier learns on exactly the windows, scales and positions it scores
at test time.

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
from densecnn.heads.detection import ConvWindowHead, detection_loss, postprocess_detections, sample_indices, window_grid

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
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn,
                trainable_stages: ``DetectionTask``.
            feature_index: the ``feature_info`` map the convolutional classifier slides over.
            window: the window side in pixels (the backbone's input size by default: 227 for AlexNet); its
                feature map must be square.
            scales: the image pyramid, factors applied to the input image (>1 finds smaller objects).
            hidden_dim, dropout: width of the fc6/fc7 convolutions, and their dropout.
            windows_per_image, fg_fraction, fg_iou: training windows sampled per image, 25% foreground
                at IoU >= 0.5, the rest background.
        """
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"model.init_args.scales must be positive factors, got {list(scales)}")
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_detection_backbone()
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

    def pyramid_windows(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every window of every pyramid scale, scored in one pass per scale: logits ``(B, N, K + 1)``, deltas
        ``(B, N, 4K)`` and the ``N`` windows ``(N, 4)`` in the pixels of ``images`` (before scaling)."""
        logits, deltas, boxes = [], [], []
        for scale in self.hparams.scales:
            scaled = images if scale == 1 else F.interpolate(images, scale_factor=float(scale), mode="bilinear",
                                                             align_corners=False)
            if min(scaled.shape[-2:]) < self.window:
                continue  # the image is smaller than one window at this scale
            scale_logits, scale_deltas = self.score_maps(scaled)
            rows, cols = scale_logits.shape[-2:]
            logits.append(scale_logits.flatten(2).transpose(1, 2))
            deltas.append(scale_deltas.flatten(2).transpose(1, 2))
            boxes.append(self.window_boxes(rows, cols, float(scale), images.device))
        if not boxes:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px are smaller than one {self.window} px window "
                             f"at every scale of model.init_args.scales={list(self.hparams.scales)}")
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.cat(boxes)

    # ---- training ----------------------------------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss on windows sampled from the same dense score maps ``detect`` uses, so training sees
        exactly the windows (positions, scales, context) that are scored at test time."""
        h = self.hparams
        logits, deltas, boxes = self.pyramid_windows(batch["image"])
        picked_logits, picked_deltas, labels, targets = [], [], [], []
        for i, target in enumerate(batch["target"]):
            keep, l, t = sample_indices(boxes, target["boxes"], target["labels"], batch_size=h.windows_per_image,
                                        fg_fraction=h.fg_fraction, fg_iou=h.fg_iou, bg_iou=(0.0, h.fg_iou))
            picked_logits.append(logits[i, keep]), picked_deltas.append(deltas[i, keep])
            labels.append(l), targets.append(t)
        deltas = torch.cat(picked_deltas)
        deltas = torch.cat([deltas.new_zeros((len(deltas), 4)), deltas], dim=1)  # no box for background
        cls_loss, box_loss = detection_loss(torch.cat(picked_logits), deltas, torch.cat(labels), torch.cat(targets))
        return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}

    # ---- detection ---------------------------------------------------------------------------------------
    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        h = self.hparams
        logits, deltas, boxes = self.pyramid_windows(images)
        scores = logits.softmax(dim=2)
        deltas = torch.cat([deltas.new_zeros((*deltas.shape[:2], 4)), deltas], dim=2)
        return [postprocess_detections(scores[i], deltas[i], boxes, tuple(images.shape[-2:]),
                                       score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                                       detections_per_img=h.detections_per_img) for i in range(len(images))]
