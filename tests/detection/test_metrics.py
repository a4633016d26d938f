"""COCO AP agrees with pycocotools' COCOeval run directly; VOC AP on worked examples."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from densecnn.metrics.detection import DetectionMetrics, VOCMeanAP, voc_ap


def _random_scene(rng, n_images=12, n_classes=3):
    """Ground truth of varied sizes and noisy, partly wrong detections of it (plus spurious ones)."""
    preds, targets = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 200, (m, 2))
        wh = rng.uniform(8, 150, (m, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, n_classes + 1, m)
        crowd = (rng.random(m) < 0.1).astype(np.int64)
        keep = rng.random(m) < 0.8
        det = gt[keep] + rng.normal(0, 6, (int(keep.sum()), 4))
        det_labels = np.where(rng.random(int(keep.sum())) < 0.85, labels[keep], rng.integers(1, n_classes + 1))
        k = int(rng.integers(0, 4))
        spurious = np.concatenate([rng.uniform(0, 200, (k, 2)), rng.uniform(0, 200, (k, 2)) + 210], 1)
        det = np.concatenate([det, spurious])
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        det_labels = np.concatenate([det_labels, rng.integers(1, n_classes + 1, k)])
        preds.append({"boxes": torch.tensor(det, dtype=torch.float32),
                      "scores": torch.tensor(rng.uniform(0.05, 1, len(det)), dtype=torch.float32),
                      "labels": torch.tensor(det_labels, dtype=torch.long)})
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(labels),
                        "iscrowd": torch.tensor(crowd)})
    return preds, targets


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    # the float32 arithmetic MeanAveragePrecision uses, so boxes near a size boundary land alike
    return box_convert(boxes, "xyxy", "xywh").tolist()


def _cocoeval_stats(preds, targets, n_classes=3) -> np.ndarray:
    """pycocotools' own evaluation: ground truth and results as COCO dicts, COCOeval.summarize's stats."""
    images, annotations, results = [], [], []
    for image_id, (pred, gt) in enumerate(zip(preds, targets), start=1):
        images.append({"id": image_id, "width": 500, "height": 500})
        areas = torchvision.ops.box_area(gt["boxes"]).tolist()
        for box, area, label, crowd in zip(_xywh(gt["boxes"]), areas, gt["labels"].tolist(), gt["iscrowd"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": box, "area": area, "iscrowd": crowd})
        for box, label, score in zip(_xywh(pred["boxes"]), pred["labels"].tolist(), pred["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "score": score, "bbox": box})
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": c} for c in range(1, n_classes + 1)]}
        gt_coco.createIndex()
        evaluator = COCOeval(gt_coco, gt_coco.loadRes(results), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return evaluator.stats


def test_coco_ap_equals_pycocotools_cocoeval():
    preds, targets = _random_scene(np.random.default_rng(3))
    metric = DetectionMetrics(prefix="val/")
    for start in range(0, len(preds), 5):  # several batches, computed once
        metric.update(preds[start:start + 5], targets[start:start + 5])
    ours = DetectionMetrics.scalars(metric.compute())
    stats = _cocoeval_stats(preds, targets)
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"]
    for index, name in enumerate(names):
        assert ours[f"val/{name}"].item() == pytest.approx(stats[index], abs=1e-6), name
    assert 0.1 < ours["val/map"] < 0.95  # a non-trivial case
    assert set(ours) == {f"val/{n}" for n in names} | {"val/map_voc07", "val/map_voc"}


def test_voc07_eleven_point_and_area_on_a_hand_example():
    """Two objects (one more is difficult), three detections by score: hit, miss, hit; and one on the
    difficult object, which counts neither way. Recall 0.5, 0.5, 1.0; precision 1, 1/2, 2/3."""
    gt = {"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60.]]),
          "labels": torch.tensor([1, 1, 1]), "iscrowd": torch.tensor([0, 0, 1])}
    pred = {"boxes": torch.tensor([[0, 0, 10, 10], [70, 70, 80, 80], [20, 20, 30, 31], [50, 50, 60, 60.]]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.95]), "labels": torch.tensor([1, 1, 1, 1])}
    metric = VOCMeanAP()
    metric.update([pred], [gt])
    values = metric.compute()
    # 11-point: recall >= 0, .1, ..., .5 -> precision 1 (6 points); .6 ... 1 -> 2/3 (5 points)
    assert values["map_voc07"].item() == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-6)
    # area: 0.5 * 1 + 0.5 * 2/3
    assert values["map_voc"].item() == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-6)


def test_voc_duplicates_other_images_and_classes():
    gt = [{"boxes": torch.tensor([[0, 0, 10, 10.]]), "labels": torch.tensor([1])},
          {"boxes": torch.tensor([[0, 0, 10, 10.]]), "labels": torch.tensor([2])}]
    # image 0: a duplicate of the hit (false positive); image 1: the right box with the wrong class
    pred = [{"boxes": torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.]]), "scores": torch.tensor([0.9, 0.8]),
             "labels": torch.tensor([1, 1])},
            {"boxes": torch.tensor([[0, 0, 10, 10.]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    metric = VOCMeanAP()
    metric.update(pred, gt)
    values = metric.compute()
    # class 1: hit then two false positives -> AP 1; class 2: never detected -> AP 0; mean 0.5
    assert values["map_voc"].item() == pytest.approx(0.5)
    assert values["map_voc07"].item() == pytest.approx(0.5)


def test_voc_ap_curve_function():
    recall = np.array([0.2, 0.4, 0.4, 0.8])
    precision = np.array([1.0, 1.0, 0.67, 0.8])
    assert voc_ap(recall, precision, False) == pytest.approx(0.4 * 1 + 0.4 * 0.8)
    assert voc_ap(recall, precision, True) == pytest.approx((5 * 1 + 4 * 0.8 + 2 * 0) / 11)
