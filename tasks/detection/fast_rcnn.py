"""Fast R-CNN (Girshick 2015): the R-CNN proposals, but the convolutional features are computed once per
image and each proposal's features are pooled from them (RoI pooling, torchvision ``roi_pool`` or
``roi_align``), then fc6, fc7 and the sibling softmax classifier / class-specific box regressor, trained
jointly with the multi-task loss (softmax log loss + smooth L1) on mini-batches of RoIs of which 25% are
foreground (IoU >= 0.5) and the rest background (IoU in [0.1, 0.5)). Detections: per-class NMS.

Proposals come with the batch (``batch["proposals"]``): the DataModule's ``proposals: selective_search``
or a proposals file.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torchvision.ops import roi_align, roi_pool

from densecnn.heads.detection import RoIBoxHead, detection_loss, postprocess_detections, sample_rois

from .base import DetectionTask


def proposals_of(batch: dict) -> list[torch.Tensor]:
    if "proposals" not in batch:
        raise ValueError("this detector needs region proposals: set data.init_args.proposals to "
                         "selective_search or to a proposals file")
    return [p.to(batch["image"].device) for p in batch["proposals"]]


class FastRCNNTask(DetectionTask):
    needs_proposals = True

    def __init__(
        self,
        backbone: str = "vgg16",
        num_classes: int = 20,
        weights: str | None = None,
        feature_index: int = -1,
        roi_op: Literal["pool", "align"] = "pool",
        roi_size: int = 7,
        hidden_dim: int = 4096,
        dropout: float = 0.5,
        rois_per_image: int = 64,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        bg_iou_low: float = 0.1,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn,
                trainable_stages: ``DetectionTask``.
            feature_index: the ``feature_info`` map RoIs are pooled from (the last conv map, VGG's conv5_3).
            roi_op, roi_size: ``pool`` (the paper's RoI max pooling) or ``align`` (bilinear), to
                ``roi_size`` x ``roi_size`` (7 for VGG-16).
            hidden_dim, dropout: fc6/fc7 width (4096 in the paper) and dropout.
            rois_per_image: R / N, RoIs sampled per image (the paper: 128 RoIs from N = 2 images).
            fg_fraction, fg_iou, bg_iou_low: 25% foreground at IoU >= 0.5, background IoU in [0.1, 0.5).
        """
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_detection_backbone()
        self.freeze_unused_backbone([h.feature_index])
        info = self.backbone.feature_info[h.feature_index]
        self.spatial_scale = 1.0 / info.reduction
        self.box_head = RoIBoxHead(info.num_chs, h.roi_size, h.num_classes, h.hidden_dim, h.dropout)

    def head_modules(self) -> list:
        return [self.box_head]

    def pooled_rois(self, images: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        """Features once per image, then one ``roi_size`` x ``roi_size`` map per RoI."""
        h = self.hparams
        features = self.backbone.forward_features(images)[h.feature_index]
        rois = [r.to(features.dtype) for r in rois]
        if h.roi_op == "align":
            return roi_align(features, rois, h.roi_size, self.spatial_scale, sampling_ratio=2, aligned=True)
        return roi_pool(features, rois, h.roi_size, self.spatial_scale)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        h = self.hparams
        rois, labels, targets = [], [], []
        for proposals, target in zip(proposals_of(batch), batch["target"]):
            r, l, t = sample_rois(proposals, target["boxes"], target["labels"], batch_size=h.rois_per_image,
                                  fg_fraction=h.fg_fraction, fg_iou=h.fg_iou, bg_iou=(h.bg_iou_low, h.fg_iou))
            rois.append(r), labels.append(l), targets.append(t)
        class_logits, box_regression = self.box_head(self.pooled_rois(batch["image"], rois))
        cls_loss, box_loss = detection_loss(class_logits, box_regression, torch.cat(labels), torch.cat(targets))
        return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}

    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        h = self.hparams
        proposals = proposals_of(batch)
        class_logits, box_regression = self.box_head(self.pooled_rois(images, proposals))
        scores = class_logits.softmax(dim=1)
        size = tuple(images.shape[-2:])
        detections = []
        for s, d, p in zip(scores.split([len(p) for p in proposals]),
                           box_regression.split([len(p) for p in proposals]), proposals):
            detections.append(postprocess_detections(s, d, p, size, score_thresh=h.score_thresh,
                                                     nms_thresh=h.nms_thresh,
                                                     detections_per_img=h.detections_per_img))
        return detections
