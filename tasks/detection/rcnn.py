"""R-CNN (Girshick et al. 2014; S3 L4007-4143): "input image -> about 2k bottom-up region proposals ->
warp each region -> CNN features -> classify regions".

Each proposal is dilated so that 16 pixels of context surround it once warped (Appendix A), warped to the
backbone's input size, and passed through the whole CNN on its own; the pooled features feed
  * a softmax over K + 1 classes (the fine-tuning classifier; ``classifier: softmax``), or the paper's
    one-vs-rest linear SVMs (``classifier: svm``) trained on the same (detached) features with the hinge
    loss: positives are the ground-truth boxes, negatives the proposals under ``svm_neg_iou`` IoU with
    every object of the class, and only the hardest negatives (highest current score) of each mini-batch
    enter the loss: hard-negative mining done online instead of over a disk cache;
  * class-specific box regression (Appendix C). The paper fits ridge regressors on pool5 features after
    training; here the same class-specific linear regressor on the CNN features trains jointly with the
    smooth-L1 loss Fast R-CNN later introduced.
Fine-tuning mini-batches hold 25% foreground (IoU >= 0.5) and 75% background windows, as in the paper
(32 positive and 96 background windows per 128). Detections: per-class NMS.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from densecnn.backbones import get_entry
from densecnn.heads.detection import (BoxPredictor, context_boxes, detection_loss, postprocess_detections,
                                      sample_rois, warp_regions)

from .base import DetectionTask
from .fast_rcnn import proposals_of


class RCNNTask(DetectionTask):
    needs_proposals = True

    def __init__(
        self,
        backbone: str = "alexnet",
        num_classes: int = 20,
        weights: str | None = None,
        crop_size: int | None = None,
        context: int = 16,
        classifier: Literal["softmax", "svm"] = "softmax",
        rois_per_image: int = 64,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        svm_neg_iou: float = 0.3,
        svm_negatives_per_positive: int = 3,
        svm_loss_weight: float = 1.0,
        crop_batch_size: int = 256,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn,
                trainable_stages: ``DetectionTask``.
            crop_size: the warped region's side; defaults to the backbone's input size (227 for AlexNet).
            context: pixels of context around each warped proposal (16 in the paper).
            classifier: ``softmax`` or the paper's per-class linear ``svm`` (scores are the SVM margins
                through a sigmoid, so ``score_thresh`` keeps its meaning).
            rois_per_image, fg_fraction, fg_iou: fine-tuning windows per image, 25% at IoU >= 0.5.
            svm_neg_iou: SVM negatives overlap every object of the class less than this (0.3, the paper's).
            svm_negatives_per_positive: hard negatives kept per class per mini-batch, per positive (at least 8).
            svm_loss_weight: weight of the SVM hinge loss.
            crop_batch_size: warped regions per backbone forward pass at test time (memory bound).
        """
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_detection_backbone()
        self.crop_size = int(h.crop_size or get_entry(h.backbone).input_size[-1])
        if 2 * h.context >= self.crop_size:
            raise ValueError(f"model.init_args.context {h.context} leaves no room in a {self.crop_size} px crop")
        features = self.backbone.num_features
        self.predictor = BoxPredictor(features, h.num_classes)
        self.svm = nn.Linear(features, h.num_classes) if h.classifier == "svm" else None
        if h.classifier not in ("softmax", "svm"):
            raise ValueError(f"model.init_args.classifier: {h.classifier!r} is not one of softmax, svm")

    def head_modules(self) -> list:
        return [m for m in (self.predictor, self.svm) if m is not None]

    def region_features(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Warp every box (with context) to ``crop_size`` and run the CNN on each: ``(R, num_features)``."""
        crops = warp_regions(images, [context_boxes(b, self.crop_size, self.hparams.context) for b in boxes],
                             self.crop_size)
        chunk = self.hparams.crop_batch_size if not self.training else len(crops)
        if len(crops) == 0:
            return crops.new_zeros((0, self.backbone.num_features))
        return torch.cat([self.backbone(part) for part in crops.split(max(1, chunk))])

    def svm_loss(self, features: torch.Tensor, rois: torch.Tensor, gts: list[tuple[torch.Tensor, torch.Tensor]],
                 image_of: torch.Tensor) -> torch.Tensor:
        """One-vs-rest hinge loss with online hard-negative mining (module docstring)."""
        h = self.hparams
        scores = self.svm(features.detach())
        losses = []
        for c in range(h.num_classes):
            positive = torch.zeros(len(rois), dtype=torch.bool, device=rois.device)
            overlap = torch.zeros(len(rois), device=rois.device)
            for i, (boxes, labels) in enumerate(gts):
                mine = image_of == i
                of_class = boxes[labels == c + 1]
                if len(of_class) and mine.any():
                    iou = box_iou(rois[mine], of_class).max(dim=1).values
                    overlap[mine] = iou
                    positive[mine] = iou >= 0.999  # the ground-truth boxes themselves
            negatives = torch.where(overlap < h.svm_neg_iou)[0]
            num_pos = int(positive.sum())
            k = min(len(negatives), max(8, h.svm_negatives_per_positive * num_pos))
            hard = negatives[scores[negatives, c].topk(k).indices] if k else negatives
            loss = F.relu(1 + scores[hard, c]).mean() if len(hard) else scores.sum() * 0
            if num_pos:
                loss = loss + F.relu(1 - scores[positive, c]).mean()
            losses.append(loss)
        return torch.stack(losses).mean()

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        h = self.hparams
        rois, labels, targets, image_of = [], [], [], []
        for i, (proposals, target) in enumerate(zip(proposals_of(batch), batch["target"])):
            r, l, t = sample_rois(proposals, target["boxes"], target["labels"], batch_size=h.rois_per_image,
                                  fg_fraction=h.fg_fraction, fg_iou=h.fg_iou, bg_iou=(0.0, h.fg_iou))
            rois.append(r), labels.append(l), targets.append(t)
            image_of.append(torch.full((len(r),), i, device=r.device))
        features = self.region_features(batch["image"], rois)
        class_logits, box_regression = self.predictor(features)
        cls_loss, box_loss = detection_loss(class_logits, box_regression, torch.cat(labels), torch.cat(targets))
        losses = {"loss_classifier": cls_loss, "loss_box_reg": box_loss}
        if self.svm is not None:
            gts = [(t["boxes"].to(features), t["labels"]) for t in batch["target"]]
            losses["loss_svm"] = h.svm_loss_weight * self.svm_loss(features, torch.cat(rois), gts, torch.cat(image_of))
        return losses

    def class_scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits, box_regression = self.predictor(features)
        if self.svm is None:
            return class_logits.softmax(dim=1), box_regression
        margins = torch.sigmoid(self.svm(features))
        return torch.cat([margins.new_zeros((len(margins), 1)), margins], dim=1), box_regression

    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        h = self.hparams
        proposals = proposals_of(batch)
        scores, box_regression = self.class_scores(self.region_features(images, proposals))
        size = tuple(images.shape[-2:])
        counts = [len(p) for p in proposals]
        return [postprocess_detections(s, d, p, size, score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                                       detections_per_img=h.detections_per_img)
                for s, d, p in zip(scores.split(counts), box_regression.split(counts), proposals)]
