"""R-CNN (Girshick et al. 2014; S3 L4007-4143): "input image -> about 2k bottom-up region proposals ->
warp each region -> CNN features -> classify regions".

Each proposal is dilated so that 16 pixels of context surround it once warped (Appendix A), warped to the
backbone's input size, and passed through the whole CNN on its own, ``crop_batch_size`` regions at a time
(in training as at test time, so memory stays bounded whatever the number of regions); the pooled features
feed
  * a softmax over K + 1 classes (the fine-tuning classifier; ``classifier: softmax``), or the paper's
    one-vs-rest linear SVMs (``classifier: svm``, Section 2.3 "Object category classifiers") trained with the
    hinge loss on features of the current network (detached, test mode): the positives of a class are all
    its ground-truth boxes in the batch, the negatives all proposals of the images overlapping every object
    of the class less than ``svm_neg_iou`` (0.3), and only the hardest negatives (highest current score)
    enter the loss: hard-negative mining over all proposals, done online at each step instead of over a
    disk cache of features;
  * class-specific box regression (Appendix C) on proposals overlapping their object by at least
    ``bbox_reg_iou`` (0.6, the paper's). The paper fits ridge regressors on pool5 features after training;
    here the same class-specific linear regressor on the CNN features trains jointly with the smooth-L1
    loss Fast R-CNN later introduced.
Fine-tuning mini-batches hold 25% foreground (IoU >= 0.5) and 75% background windows, as in the paper
(32 positive and 96 background windows per 128). Detections: per-class NMS.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from densecnn.backbones import get_entry
from densecnn.heads.detection import BoxPredictor, context_boxes, warp_regions

from .proposal_based import ProposalDetectionTask, proposals_of


def svm_examples(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_classes: int,
                 neg_iou: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R-CNN's SVM training set for one image (Section 2.3): the regions are the ground-truth boxes followed
    by the proposals; for class c (label c + 1) the positives are its ground-truth boxes, the negatives the
    proposals whose IoU with every object of class c is below ``neg_iou`` (all proposals when the image has
    none). Proposals in the grey zone and ground-truth boxes of other classes are neither.

    Returns ``(regions (G + P, 4), positive (G + P, K), negative (G + P, K))``."""
    gt_boxes = gt_boxes.to(proposals)
    num_gt, classes = len(gt_boxes), torch.arange(1, num_classes + 1, device=proposals.device)
    of_class = gt_labels.to(proposals.device)[:, None] == classes[None]  # (G, K)
    positive = torch.zeros((num_gt + len(proposals), num_classes), dtype=torch.bool, device=proposals.device)
    positive[:num_gt] = of_class
    overlap = proposals.new_zeros((len(proposals), num_classes))
    if num_gt and len(proposals):  # the largest IoU with an object of each class (0 where there is none)
        iou = box_iou(proposals, gt_boxes)
        overlap = (iou[:, :, None] * of_class[None]).amax(dim=1)
    negative = torch.zeros_like(positive)
    negative[num_gt:] = overlap < neg_iou
    return torch.cat([gt_boxes, proposals]), positive, negative


def svm_hinge_loss(scores: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                   negatives_per_positive: int = 3, min_negatives: int = 8) -> torch.Tensor:
    """One-vs-rest hinge loss (labels +1 / -1), mean over classes: per class, every positive and the
    ``max(min_negatives, negatives_per_positive * positives)`` negatives with the highest scores (the hard
    negatives: the ones the current SVM gets most wrong)."""
    losses = []
    for c in range(scores.shape[1]):
        pos, neg = scores[positive[:, c], c], scores[negative[:, c], c]
        k = min(len(neg), max(min_negatives, negatives_per_positive * len(pos)))
        loss = scores[:, c].sum() * 0  # a class without examples in this batch: zero, in the graph
        if k:
            loss = loss + F.relu(1 + neg.topk(k).values).mean()
        if len(pos):
            loss = loss + F.relu(1 - pos).mean()
        losses.append(loss)
    return torch.stack(losses).mean()


class RCNNTask(ProposalDetectionTask):
    """R-CNN (Girshick et al. 2014): each proposal warped with 16 px context to the backbone's input
    (Section 2.1), softmax scores or per-class linear SVMs with hard-negative mining (Section 2.3), and
    class-specific box regression (Appendix C; trained jointly with smooth L1 here, not by ridge regression).
    """
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
        bbox_reg_iou: float = 0.6,
        svm_neg_iou: float = 0.3,
        svm_negatives_per_positive: int = 3,
        svm_loss_weight: float = 1.0,
        crop_batch_size: int = 256,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn, trainable_stages:
                see ``DetectionTask``.
            crop_size: the warped region's side; defaults to the backbone's input size (227 for AlexNet).
            context: pixels of context around each warped proposal (16 in the paper).
            classifier: ``softmax`` or the paper's per-class linear ``svm`` (scores are the SVM margins
                through a sigmoid, so ``score_thresh`` keeps its meaning).
            rois_per_image, fg_fraction, fg_iou: fine-tuning windows per image, 25% at IoU >= 0.5.
            bbox_reg_iou: foreground windows train the box regressor from this IoU with their object (the
                paper's 0.6, Appendix C).
            svm_neg_iou: SVM negatives overlap every object of the class less than this (0.3, the paper's).
            svm_negatives_per_positive: hard negatives kept per class per mini-batch, per positive (at least 8).
            svm_loss_weight: weight of the SVM hinge loss.
            crop_batch_size: warped regions per backbone forward pass, in training and at test time (memory).
        """
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        if h.classifier not in ("softmax", "svm"):
            raise ValueError(f"model.init_args.classifier: {h.classifier!r} is not one of softmax, svm")
        if h.crop_batch_size < 1:
            raise ValueError(f"model.init_args.crop_batch_size must be >= 1, got {h.crop_batch_size}")
        self.backbone = self.build_detection_backbone()
        self.crop_size = int(h.crop_size or get_entry(h.backbone).input_size[-1])
        if 2 * h.context >= self.crop_size:
            raise ValueError(f"model.init_args.context {h.context} leaves no room in a {self.crop_size} px crop")
        features = self.backbone.num_features
        self.predictor = BoxPredictor(features, h.num_classes)
        self.svm = nn.Linear(features, h.num_classes) if h.classifier == "svm" else None

    def head_modules(self) -> list:
        return [m for m in (self.predictor, self.svm) if m is not None]

    def region_features(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Warp every box (with context) to ``crop_size`` and run the CNN on each, ``crop_batch_size`` at a
        time: only the features of the chunks are concatenated. ``(R, num_features)``; with no box at all the
        CNN still runs (on an empty batch), so its parameters stay in the graph (DDP)."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]
                         ) if boxes else images.new_zeros((0, 5))
        # equal chunks rather than full ones and a remainder: a remainder of one region would be a batch of one
        # for a batch-norm backbone in training (each chunk is its own normalisation batch there)
        chunks = rois.tensor_split(math.ceil(len(rois) / self.hparams.crop_batch_size)) if len(rois) else [rois]
        return torch.cat([self.roi_features(images, part) for part in chunks])

    def roi_features(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """CNN features of ``(K, 5)`` RoIs ``[image index, x1, y1, x2, y2]`` in one pass: each box dilated for
        context (Appendix A) and warped to ``crop_size``. ``(K, num_features)``."""
        dilated = context_boxes(rois[:, 1:], self.crop_size, self.hparams.context)
        return self.backbone(warp_regions(images, torch.cat([rois[:, :1], dilated], dim=1), self.crop_size))

    def predict_regions(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(features)

    def regression_iou(self) -> float:
        return self.hparams.bbox_reg_iou

    def region_scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits, box_regression = self.predictor(features)
        if self.svm is None:
            return class_logits.softmax(dim=1), box_regression
        margins = torch.sigmoid(self.svm(features))
        # zeros_like, not new_zeros(len(...)): a traced len() would fix the exported graph's RoI count
        return torch.cat([torch.zeros_like(margins[:, :1]), margins], dim=1), box_regression

    def export_spec(self, *, dynamic_batch: bool = True, datamodule=None):
        """The per-RoI network: images and RoIs -> class scores (softmax, or the SVMs' sigmoid margins) and box
        deltas (``tasks.detection.export``)."""
        from .export import region_spec

        what = "R-CNN (context dilation, warping, CNN, " + ("SVMs" if self.svm is not None else "softmax") + \
            " and box regression inside the graph)"
        return region_spec(self, dynamic_batch, what, datamodule)

    def extra_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.svm is None:
            return {}
        return {"loss_svm": self.hparams.svm_loss_weight * self.svm_loss(batch)}

    def svm_loss(self, batch: dict) -> torch.Tensor:
        """The SVMs' hinge loss on every ground-truth box and every proposal of the batch (``svm_examples``),
        scored on the current network's features in test mode without gradient (the paper trains the SVMs
        on fixed features of the fine-tuned network)."""
        h = self.hparams
        regions, positive, negative = [], [], []
        for proposals, target in zip(proposals_of(batch), batch["target"]):
            r, p, n = svm_examples(proposals, target["boxes"], target["labels"], h.num_classes, h.svm_neg_iou)
            regions.append(r), positive.append(p), negative.append(n)
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            features = self.region_features(batch["image"], regions)
        self.backbone.train(was_training)
        return svm_hinge_loss(self.svm(features), torch.cat(positive), torch.cat(negative),
                              h.svm_negatives_per_positive)
