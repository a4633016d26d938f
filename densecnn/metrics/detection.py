"""Detection evaluation: COCO AP through pycocotools' COCOeval and Pascal VOC mAP@0.5 (11-point and area), as
torchmetrics Metrics updated per batch, synced across DDP ranks and computed once per epoch.

Both take torchvision-style inputs: ``preds`` a list (one per image) of ``{"boxes" (xyxy), "scores",
"labels"}``, ``target`` a list of ``{"boxes", "labels"[, "iscrowd", "difficult", "area"]}``:
  * ``iscrowd`` marks COCO crowd regions: COCOeval matches any number of detections to one with
    IoU = intersection / detection area, and they count neither way;
  * ``difficult`` marks objects that are ignored but are no crowd (Pascal VOC's "difficult"): in COCOeval
    terms ``ignore = 1``: one detection matching it (ordinary IoU) counts neither way, further ones are false
    positives or match elsewhere. VOC's own metric ignores both kinds, as the devkit does;
  * ``area`` is the annotation's area that COCO's size buckets (``map_small`` ...) use, as COCOeval does
    (without it, the box area).
A split without any ground truth gives -1 (COCO's "undefined") for every value, never NaN.
"""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric, MetricCollection
from torchvision.ops import box_convert, box_iou

from .tables import mean_row, table_csv, table_markdown

#: the scalars ``DetectionMetrics`` reports (COCO's summary plus the two VOC numbers)
COCO_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")
VOC_KEYS = ("map_voc07", "map_voc")
#: COCOeval.summarize's twelve ``stats``, in order
COCO_STATS = COCO_KEYS + ("mar_small", "mar_medium", "mar_large")
UNDEFINED = -1.0  # COCO's "undefined"; NaN would break a logger, a checkpoint monitor or early stopping


class _PerImageDetections(Metric):
    """Detections and ground truth of every image seen, as flat ``cat`` states that torchmetrics gathers
    across DDP ranks; an image key unique across ranks keeps the images apart once concatenated."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("det_boxes", "det_scores", "det_labels", "det_image", "gt_boxes", "gt_labels", "gt_crowd",
                     "gt_difficult", "gt_area", "gt_image", "images"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._images_seen = 0

    def _image_key(self) -> int:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self._images_seen += 1
        return (rank << 40) + self._images_seen

    def update(self, preds: Sequence[dict], target: Sequence[dict]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"{type(self).__name__}: {len(preds)} predictions for {len(target)} targets")
        for pred, gt in zip(preds, target):
            key = self._image_key()
            n, m = len(pred["boxes"]), len(gt["boxes"])

            def flag(name: str) -> torch.Tensor:
                value = gt.get(name)
                return torch.zeros(m, dtype=torch.long, device=self.device) if value is None else \
                    value.detach().long().reshape(-1).to(self.device)

            self.images.append(torch.tensor([key], dtype=torch.long, device=self.device))
            self.det_boxes.append(pred["boxes"].detach().float().reshape(-1, 4))
            self.det_scores.append(pred["scores"].detach().float().reshape(-1))
            self.det_labels.append(pred["labels"].detach().long().reshape(-1))
            self.det_image.append(torch.full((n,), key, dtype=torch.long, device=self.device))
            self.gt_boxes.append(gt["boxes"].detach().float().reshape(-1, 4))
            self.gt_labels.append(gt["labels"].detach().long().reshape(-1))
            self.gt_crowd.append(flag("iscrowd"))
            self.gt_difficult.append(flag("difficult"))
            area = gt.get("area")
            # 0 = unknown: the box area is used (compute)
            self.gt_area.append(torch.zeros(m, dtype=torch.float64, device=self.device) if area is None else
                                area.detach().to(self.device, torch.float64).reshape(-1))
            self.gt_image.append(torch.full((m,), key, dtype=torch.long, device=self.device))

    def gathered(self) -> dict[str, np.ndarray]:
        """The states as numpy arrays (after torchmetrics' DDP sync, every rank's)."""
        out = {}
        for name in ("det_boxes", "gt_boxes", "det_scores", "det_labels", "det_image", "gt_labels", "gt_crowd",
                     "gt_difficult", "gt_area", "gt_image", "images"):
            value = getattr(self, name)
            if isinstance(value, list):
                value = torch.cat(value) if value else torch.zeros((0, 4) if name.endswith("boxes") else (0,))
            out[name] = value.cpu().numpy()
        return out


# ---- COCO -------------------------------------------------------------------------------------------------
class IgnoreAwareCOCOeval(COCOeval):
    """pycocotools' COCOeval, keeping each ground truth's own ``ignore`` flag.

    COCOeval has the flag (``gtIgnore``: a detection matched to such an object is neither a true nor a false
    positive), but its ``_prepare`` overwrites ``ignore`` with ``iscrowd`` (cocoeval.py, "set ignore flag"),
    so an ignored object that is no crowd region would count as an ordinary one. Here ``ignore`` becomes
    ``iscrowd or ignore``; everything else (matching, crowd IoU, area ranges) is COCOeval's own.
    """

    def _prepare(self) -> None:
        # read before ``super()._prepare`` writes into the same annotation dicts (idempotent on a rerun)
        own = {ann["id"]: bool(ann.get("ignore", 0)) for ann in self.cocoGt.dataset.get("annotations", [])}
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                g["ignore"] = int(bool(g["ignore"]) or own.get(g["id"], False))


def _coco_dataset(images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, image_of: np.ndarray,
                  categories: list[int], **per_box: np.ndarray) -> COCO:
    """A pycocotools ``COCO`` from flat arrays (boxes xyxy float32); ``per_box`` adds fields (``score``,
    ``iscrowd``, ``ignore``, ``area``). Boxes become xywh in float32, as torchmetrics hands them over."""
    xywh = box_convert(torch.from_numpy(boxes).float(), "xyxy", "xywh").tolist()
    annotations = []
    for index, (box, label, image) in enumerate(zip(xywh, labels.tolist(), image_of.tolist())):
        ann = {"id": index + 1, "image_id": image, "category_id": label, "bbox": box,
               "area": box[2] * box[3], "iscrowd": 0}  # ids from 1: COCOeval treats id 0 as "unmatched"
        for name, values in per_box.items():
            ann[name] = values[index].item()
        if not ann["area"] > 0:  # no annotation area given: the box's, as COCO's loadRes computes it
            ann["area"] = box[2] * box[3]
        annotations.append(ann)
    coco = COCO()
    coco.dataset = {"images": [{"id": int(i)} for i in images], "annotations": annotations,
                    "categories": [{"id": c, "name": str(c)} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def per_class_coco_ap(evaluator: COCOeval) -> np.ndarray:
    """AP@[.5:.95] per category of an accumulated COCOeval (all areas, 100 detections), as ``summarize``
    computes it for one category; -1 where undefined (no ground truth)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [T, R, K, A, M] -> [T, R, K]
    out = np.full(precision.shape[2], UNDEFINED)
    for k in range(precision.shape[2]):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        if valid.size:
            out[k] = valid.mean()
    return out


class COCOMeanAP(_PerImageDetections):
    """COCO AP@[.5:.05:.95], AP50, AP75, AP and AR by object size (COCOeval.summarize's 12 numbers) and AP
    per class (``map_per_class`` for ``classes``), computed by pycocotools' COCOeval once per epoch.

    Crowd regions and ignored (``difficult``) objects are handed to COCOeval as ``iscrowd`` and ``ignore``
    (``IgnoreAwareCOCOeval``). The IoU and recall thresholds are pycocotools' own ``Params`` values.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        s = self.gathered()
        values = {k: torch.tensor(UNDEFINED) for k in COCO_STATS}
        classes = np.unique(np.concatenate([s["gt_labels"], s["det_labels"]])).astype(int).tolist()
        per_class = np.full(len(classes), UNDEFINED)
        if len(s["gt_labels"]):
            self.evaluator = self.evaluate(s, classes)
            values = {k: torch.tensor(float(v)) for k, v in zip(COCO_STATS, self.evaluator.stats)}
            per_class = per_class_coco_ap(self.evaluator)
        return {**{k: v.float() for k, v in values.items()},
                "map_per_class": torch.tensor(per_class, dtype=torch.float32),
                "classes": torch.tensor(classes, dtype=torch.long)}

    @staticmethod
    def evaluate(s: dict[str, np.ndarray], classes: list[int]) -> COCOeval:
        images = np.unique(s["images"]).tolist()
        gt = _coco_dataset(images, s["gt_boxes"], s["gt_labels"], s["gt_image"], classes,
                           iscrowd=s["gt_crowd"], ignore=s["gt_difficult"], area=s["gt_area"])
        dt = _coco_dataset(images, s["det_boxes"], s["det_labels"], s["det_image"], classes,
                           score=s["det_scores"].astype(np.float64))
        evaluator = IgnoreAwareCOCOeval(gt, dt, "bbox")
        # pycocotools' own thresholds, exactly (float64 linspace, as in Params.setDetParams)
        evaluator.params.iouThrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
        evaluator.params.recThrs = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
        evaluator.params.maxDets = [1, 10, 100]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
        return evaluator


def coco_map() -> COCOMeanAP:
    """COCO AP computed by pycocotools' COCOeval (see ``COCOMeanAP``)."""
    return COCOMeanAP()


# ---- Pascal VOC -------------------------------------------------------------------------------------------
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


class VOCMeanAP(_PerImageDetections):
    """Pascal VOC mean AP at IoU > ``iou_threshold`` (0.5): ``map_voc07`` (11-point) and ``map_voc`` (area),
    and per class (``map_voc_per_class``, ``map_voc07_per_class``, ``num_gt_per_class`` counted objects,
    ``num_ignored_per_class`` for ``voc_classes``); after ``compute``, ``curves`` maps each class to its
    ``(recall, precision)`` arrays, detections by decreasing score.

    Matching follows the devkit: detections of a class, by decreasing score, take the ground-truth box
    they overlap most; above the threshold that is a true positive unless the box was already taken (a
    false positive) or is ignored (difficult or crowd: neither); below it, a false positive. Classes
    without ground truth are left out of the mean; with none at all the value is -1, as COCOeval reports it.
    """

    def __init__(self, iou_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        self.curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def compute(self) -> dict[str, torch.Tensor]:
        s = self.gathered()
        ignored = (s["gt_crowd"] != 0) | (s["gt_difficult"] != 0)
        classes = np.unique(s["gt_labels"]).astype(int)
        ap07, ap, counted, n_ignored, self.curves = [], [], [], [], {}
        for cls in classes:
            gt_of, det_of = s["gt_labels"] == cls, s["det_labels"] == cls
            positives = int((gt_of & ~ignored).sum())
            counted.append(positives), n_ignored.append(int((gt_of & ignored).sum()))
            if positives == 0:
                ap07.append(UNDEFINED), ap.append(UNDEFINED)
                continue
            tp, fp = self._match(s["det_boxes"][det_of], s["det_scores"][det_of], s["det_image"][det_of],
                                 s["gt_boxes"][gt_of], ignored[gt_of], s["gt_image"][gt_of])
            # a detection of an ignored object adds no point of its own (the devkit's curve repeats the one
            # before it, or (0, 0) at the start): leaving it out changes neither AP and cleans up the curve
            counted_det = (tp + fp) > 0
            tp, fp = np.cumsum(tp[counted_det]), np.cumsum(fp[counted_det])
            recall = tp / positives
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            self.curves[int(cls)] = (recall, precision)
            ap07.append(voc_ap(recall, precision, True)), ap.append(voc_ap(recall, precision, False))
        ap07, ap = np.asarray(ap07, np.float64), np.asarray(ap, np.float64)
        defined = ap > UNDEFINED
        return {"map_voc07": torch.tensor(ap07[defined].mean() if defined.any() else UNDEFINED, dtype=torch.float32),
                "map_voc": torch.tensor(ap[defined].mean() if defined.any() else UNDEFINED, dtype=torch.float32),
                "map_voc07_per_class": torch.tensor(ap07, dtype=torch.float32),
                "map_voc_per_class": torch.tensor(ap, dtype=torch.float32),
                "num_gt_per_class": torch.tensor(counted, dtype=torch.long),
                "num_ignored_per_class": torch.tensor(n_ignored, dtype=torch.long),
                "voc_classes": torch.tensor(classes, dtype=torch.long)}

    def _match(self, boxes, scores, images, gt_boxes, gt_ignore, gt_images) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-scores, kind="stable")
        boxes, images = boxes[order], images[order]
        tp, fp = np.zeros(len(boxes)), np.zeros(len(boxes))
        taken = np.zeros(len(gt_boxes), bool)
        by_image: dict[int, list] = {}
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
                    continue  # a difficult object: neither a hit nor a miss (the devkit's rule)
                if not taken[g]:
                    tp[d], taken[g] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        return tp, fp


class DetectionMetrics(MetricCollection):
    """COCO AP (``map``, ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_*``) and VOC mAP@0.5
    (``map_voc07``, ``map_voc``) together; ``scalars(computed)`` keeps the loggable numbers and
    ``per_class_table(computed)`` the per-class ones."""

    def __init__(self, **kwargs):
        # both keep the same per-image detections and ground truth: one copy, updated and synced once
        super().__init__({"coco": coco_map(), "voc": VOCMeanAP()}, compute_groups=[["coco", "voc"]], **kwargs)

    @staticmethod
    def scalars(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = COCO_KEYS + VOC_KEYS
        return {k: v.float() for k, v in values.items() if k.rsplit("/", 1)[-1] in keys}

    @staticmethod
    def per_class_table(values: dict[str, torch.Tensor], num_classes: int) -> list[dict]:
        """One row per class label 1..``num_classes``: ``label``, ``ap50_voc`` (area), ``ap50_voc07``
        (11-point), ``ap_coco`` (AP@[.5:.95]), ``gt_objects`` (counted), ``ignored`` (difficult or crowd);
        an AP is None where the split has no counted object of the class."""
        plain = {k.rsplit("/", 1)[-1]: v for k, v in values.items()}
        rows = {label: {"label": label, "ap50_voc": None, "ap50_voc07": None, "ap_coco": None, "gt_objects": 0,
                        "ignored": 0} for label in range(1, num_classes + 1)}

        def defined(value: float) -> float | None:
            return None if value <= UNDEFINED else float(value)

        for i, label in enumerate(plain["voc_classes"].tolist()):
            if label in rows:
                rows[label].update(ap50_voc=defined(plain["map_voc_per_class"][i].item()),
                                   ap50_voc07=defined(plain["map_voc07_per_class"][i].item()),
                                   gt_objects=int(plain["num_gt_per_class"][i]),
                                   ignored=int(plain["num_ignored_per_class"][i]))
        for i, label in enumerate(plain["classes"].tolist()):
            if label in rows and rows[label]["gt_objects"]:
                rows[label]["ap_coco"] = defined(plain["map_per_class"][i].item())
        return list(rows.values())


#: the per-class table's columns: (row key, header)
PER_CLASS_COLUMNS = (("class", "class"), ("ap50_voc", "AP50 (VOC, area)"), ("ap50_voc07", "AP50 (VOC07, 11-point)"),
                     ("ap_coco", "AP (COCO, .5:.95)"), ("gt_objects", "objects"), ("ignored", "ignored"))


def per_class_csv(rows: Sequence[dict]) -> str:
    """The per-class table as CSV (full precision; an empty cell where an AP is undefined)."""
    return table_csv(rows, PER_CLASS_COLUMNS)


def per_class_markdown(rows: Sequence[dict], means: dict[str, float] | None = None) -> str:
    """The per-class table as markdown, with a "mean" row when ``means`` (the metric's own
    ``map_voc``/``map_voc07``/``map`` under the row keys) is given."""
    total = None if means is None else mean_row(rows, means, ("gt_objects", "ignored"))
    return table_markdown(rows, PER_CLASS_COLUMNS, total)
