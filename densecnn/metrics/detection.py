"""Detection evaluation: COCO AP through pycocotools and Pascal VOC mAP@0.5 (11-point and area), as
torchmetrics Metrics updated per batch, synced across DDP ranks and computed once per epoch.

Both take torchvision-style inputs: ``preds`` a list (one per image) of ``{"boxes" (xyxy), "scores",
"labels"}``, ``target`` a list of ``{"boxes", "labels"[, "iscrowd", "area"]}``; ``iscrowd`` marks objects evaluation
ignores (COCO crowd regions; VOC "difficult" objects); ``area`` is the annotation's area that COCO's size
buckets (``map_small`` ...) use, as COCOeval does (without it, the box area). A split without any ground
truth gives -1 (COCO's "undefined") for every value, never NaN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics import Metric, MetricCollection
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

#: the scalars ``DetectionMetrics`` reports (COCO's summary plus the two VOC numbers)
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")
VOC_KEYS = ("map_voc07", "map_voc")


def coco_map() -> MeanAveragePrecision:
    """COCO AP@[.5:.05:.95], AP50, AP75 and AP by object size, computed by pycocotools' COCOeval.

    The IoU and recall thresholds are pycocotools' own ``Params`` values in float64: torchmetrics' defaults
    are float32 approximations, which move the odd match lying exactly between them.
    """
    iou_thresholds = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True).tolist()
    rec_thresholds = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True).tolist()
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                iou_thresholds=iou_thresholds, rec_thresholds=rec_thresholds)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision from a precision/recall curve, as the VOC devkit's ``voc_ap`` computes it.

    VOC2007 (11-point): the mean over recall thresholds t in {0, 0.1, ..., 1} of the highest precision at
    recall >= t. VOC2010+ (area): the area under the curve after making precision monotonically decreasing.
    """
    if use_07_metric:
        points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


class VOCMeanAP(Metric):
    """Pascal VOC mean AP at IoU > ``iou_threshold`` (0.5): ``map_voc07`` (11-point) and ``map_voc`` (area).

    Matching follows the devkit: detections of a class, by decreasing score, take the ground-truth box
    they overlap most; above the threshold that is a true positive unless the box was already taken (a
    false positive) or is difficult (ignored: neither); below it, a false positive. Classes without
    ground truth are left out of the mean; with none at all the value is -1, as COCOeval reports it.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        for name in ("det_boxes", "det_scores", "det_labels", "det_image", "gt_boxes", "gt_labels",
                     "gt_ignore", "gt_image"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._images_seen = 0

    def _image_key(self) -> int:
        # unique across ranks, so images stay apart once the states are concatenated
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._images_seen += 1
        return (rank << 40) + self._images_seen

    def update(self, preds: Sequence[dict], target: Sequence[dict]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"VOCMeanAP: {len(preds)} predictions for {len(target)} targets")
        for pred, gt in zip(preds, target):
            key = self._image_key()
            n, m = len(pred["boxes"]), len(gt["boxes"])
            self.det_boxes.append(pred["boxes"].detach().float().reshape(-1, 4))
            self.det_scores.append(pred["scores"].detach().float().reshape(-1))
            self.det_labels.append(pred["labels"].detach().long().reshape(-1))
            self.det_image.append(torch.full((n,), key, dtype=torch.long, device=self.device))
            self.gt_boxes.append(gt["boxes"].detach().float().reshape(-1, 4))
            self.gt_labels.append(gt["labels"].detach().long().reshape(-1))
            ignore = gt.get("iscrowd")
            ignore = torch.zeros(m, dtype=torch.long, device=self.device) if ignore is None else ignore
            self.gt_ignore.append(ignore.detach().long().reshape(-1))
            self.gt_image.append(torch.full((m,), key, dtype=torch.long, device=self.device))

    @staticmethod
    def _cat(value, width: int | None = None) -> np.ndarray:
        if isinstance(value, list):
            value = torch.cat(value) if value else torch.zeros((0, width) if width else (0,))
        return value.cpu().numpy()

    def compute(self) -> dict[str, torch.Tensor]:
        det_boxes, gt_boxes = self._cat(self.det_boxes, 4), self._cat(self.gt_boxes, 4)
        det_scores, det_labels, det_image = (self._cat(v) for v in (self.det_scores, self.det_labels, self.det_image))
        gt_labels, gt_ignore, gt_image = (self._cat(v) for v in (self.gt_labels, self.gt_ignore, self.gt_image))
        ap07, ap = [], []
        for cls in np.unique(gt_labels):
            gt_of = gt_labels == cls
            positives = int((gt_of & (gt_ignore == 0)).sum())
            if positives == 0:
                continue
            tp, fp = self._match(det_boxes[det_labels == cls], det_scores[det_labels == cls],
                                 det_image[det_labels == cls], gt_boxes[gt_of], gt_ignore[gt_of], gt_image[gt_of])
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            recall = tp / positives
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap07.append(voc_ap(recall, precision, True))
            ap.append(voc_ap(recall, precision, False))
        # no ground truth: COCO's "undefined" -1 (what the COCO keys report too), not NaN, which a logger,
        # checkpoint monitor or early stopping on this value cannot handle
        undefined = -1.0
        return {"map_voc07": torch.tensor(np.mean(ap07) if ap07 else undefined, dtype=torch.float32),
                "map_voc": torch.tensor(np.mean(ap) if ap else undefined, dtype=torch.float32)}

    def _match(self, boxes, scores, images, gt_boxes, gt_ignore, gt_images) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-scores, kind="stable")
        boxes, images = boxes[order], images[order]
        tp, fp = np.zeros(len(boxes)), np.zeros(len(boxes))
        taken = np.zeros(len(gt_boxes), bool)
        by_image: dict[int, np.ndarray] = {}
        for index in np.arange(len(gt_boxes)):
            by_image.setdefault(int(gt_images[index]), []).append(index)
        for d, (box, image) in enumerate(zip(boxes, images)):
            candidates = np.asarray(by_image.get(int(image), []), dtype=np.int64)
            if len(candidates) == 0:
                fp[d] = 1
                continue
            ious = box_iou(torch.from_numpy(box[None]), torch.from_numpy(gt_boxes[candidates]))[0].numpy()
            best = int(ious.argmax())
            if ious[best] > self.iou_threshold:
                g = candidates[best]
                if gt_ignore[g]:
                    continue  # a difficult object: neither a hit nor a miss
                if not taken[g]:
                    tp[d], taken[g] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        return tp, fp


class DetectionMetrics(MetricCollection):
    """COCO AP (``map``, ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_*``) and VOC mAP@0.5
    (``map_voc07``, ``map_voc``) together; ``scalars(computed)`` keeps the loggable numbers."""

    def __init__(self, **kwargs):
        super().__init__({"coco": coco_map(), "voc": VOCMeanAP()}, compute_groups=False, **kwargs)

    @staticmethod
    def scalars(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = COCO_KEYS + VOC_KEYS
        return {k: v.float() for k, v in values.items() if k.rsplit("/", 1)[-1] in keys}
