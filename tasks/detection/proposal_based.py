"""What R-CNN and Fast R-CNN share: region proposals that come with the batch, the per-image RoI sampling of
the fine-tuning mini-batches, the multi-task loss, and the detect loop (class scores and class-specific box
deltas per proposal, clipped to each image's real content, per-class NMS).

A proposal-based detector implements only how regions become features (``region_features``: R-CNN warps
each region and runs the whole CNN on it; Fast R-CNN pools it from one feature map per image) and the two
sibling outputs on those features (``predict_regions``).
"""
from __future__ import annotations

from abc import abstractmethod

import torch
from torchvision.ops import box_iou

from densecnn.heads.detection import detection_loss, postprocess_detections, sample_rois

from .base import DetectionTask


def proposals_of(batch: dict) -> list[torch.Tensor]:
    """The batch's region proposals (xyxy, network-input pixels), one tensor per image."""
    if "proposals" not in batch:
        raise ValueError("this detector needs region proposals: set data.init_args.proposals to "
                         "selective_search or to a proposals file")
    return [p.to(batch["image"].device) for p in batch["proposals"]]


class ProposalDetectionTask(DetectionTask):
    """Subclasses have the hyper-parameters ``rois_per_image``, ``fg_fraction`` and ``fg_iou``."""

    needs_proposals = True

    # ---- what a proposal-based detector provides ---------------------------------------------------------
    @abstractmethod
    def region_features(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """``(sum of boxes, D)`` features of every box (xyxy, network-input pixels) of every image."""

    @abstractmethod
    def roi_features(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``(K, D)`` features of ``(K, 5)`` RoIs ``[image index, x1, y1, x2, y2]`` (what the exported per-RoI
        graph runs, ``tasks.detection.export``)."""

    @abstractmethod
    def predict_regions(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(R, K + 1)`` and class-specific box deltas ``(R, (K + 1) * 4)``."""

    def region_scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time class probabilities ``(R, K + 1)`` (column 0 background) and box deltas."""
        class_logits, box_regression = self.predict_regions(features)
        return class_logits.softmax(dim=1), box_regression

    def background_iou(self) -> tuple[float, float]:
        """IoU band of background RoIs: ``[low, fg_iou)``."""
        return 0.0, self.hparams.fg_iou

    def regression_iou(self) -> float | None:
        """Foreground RoIs train the box regressor from this IoU with their object (``None``: all of them)."""
        return None

    def extra_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Losses besides the multi-task loss (R-CNN's SVMs)."""
        return {}

    # ---- training ----------------------------------------------------------------------------------------
    def sample_training_rois(self, batch: dict
                             ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image, ``rois_per_image`` RoIs of which ``fg_fraction`` foreground (Fast R-CNN Section 2.3,
        R-CNN Section 2.3: 32 positive and 96 background windows per 128). Returns the RoIs per image, and
        over the batch their labels, regression targets and which of them train the box regressor."""
        h = self.hparams
        rois, labels, targets, regress = [], [], [], []
        for proposals, target in zip(proposals_of(batch), batch["target"]):
            gt = target["boxes"].to(proposals)
            r, l, t = sample_rois(proposals, gt, target["labels"], batch_size=h.rois_per_image,
                                  fg_fraction=h.fg_fraction, fg_iou=h.fg_iou, bg_iou=self.background_iou())
            threshold = self.regression_iou()
            if threshold is None or len(gt) == 0:
                regress.append(l > 0)
            else:
                regress.append((l > 0) & (box_iou(r, gt).max(dim=1).values >= threshold))
            rois.append(r), labels.append(l), targets.append(t)
        return rois, torch.cat(labels), torch.cat(targets), torch.cat(regress)

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        rois, labels, targets, regress = self.sample_training_rois(batch)
        class_logits, box_regression = self.predict_regions(self.region_features(batch["image"], rois))
        cls_loss, box_loss = detection_loss(class_logits, box_regression, labels, targets, regress=regress)
        return {"loss_classifier": cls_loss, "loss_box_reg": box_loss, **self.extra_losses(batch)}

    # ---- detection ---------------------------------------------------------------------------------------
    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        """Every proposal scored and regressed, boxes clipped to the image's content (not the padding: the
        batch's ``image_size``), then per-class NMS."""
        h = self.hparams
        proposals = proposals_of(batch)
        scores, box_regression = self.region_scores(self.region_features(images, proposals))
        counts = [len(p) for p in proposals]
        return [postprocess_detections(s, d, p, size, score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                                       detections_per_img=h.detections_per_img)
                for s, d, p, size in zip(scores.split(counts), box_regression.split(counts), proposals,
                                         self.image_sizes(batch))]
