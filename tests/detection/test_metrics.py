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


def test_size_buckets_use_the_annotation_area_like_cocoeval(tmp_path):
    """APs/APm/APl and ARs/m/l bucket objects by the annotation's ``area`` (the segment's), not the box's.
    The ground truth below puts boxes in other buckets than their box areas would; it goes through
    ``read_coco``, the (resizing) evaluation pipeline and ``to_original``, then must give COCOeval's numbers
    on the very same JSON files."""
    import json

    from PIL import Image

    from densecnn.data.detection import (DetectionDataset, build_detection_pipeline, detection_collate,
                                         read_coco)
    from tasks.detection.base import DetectionTask

    # (x, y, w, h), area: box area 1600 (medium) -> small; 400 (small) -> medium; 12100 (large) -> medium;
    # 2500 (medium) -> large; one left where its box is (900, small)
    objects = {1: [([10, 10, 40, 40], 500.0), ([100, 20, 20, 20], 2000.0), ([60, 80, 110, 110], 5000.0)],
               2: [([20, 30, 50, 50], 10000.0), ([150, 10, 30, 30], 900.0)]}
    images, annotations = [], []
    for image_id, objs in objects.items():
        Image.fromarray(np.zeros((200, 250, 3), np.uint8)).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 250, "height": 200})
        for bbox, area in objs:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": bbox, "area": area, "iscrowd": 0})
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": [{"id": 1, "name": "thing"}]}))
    # detections: the ground-truth boxes, plus false positives of every size scored above some of them
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9 - 0.1 * i}
               for i, a in enumerate(annotations)]
    results += [{"image_id": 1, "category_id": 1, "bbox": [200, 150, 20, 20], "score": 0.85},
                {"image_id": 2, "category_id": 1, "bbox": [100, 100, 45, 45], "score": 0.75},
                {"image_id": 2, "category_id": 1, "bbox": [120, 60, 110, 110], "score": 0.65}]
    res_file = tmp_path / "res.json"
    res_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO(str(gt_file))
        evaluator = COCOeval(gt_coco, gt_coco.loadRes(str(res_file)), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    stats = evaluator.stats

    records, _, _ = read_coco(gt_file, tmp_path)
    dataset = DetectionDataset(records, build_detection_pipeline(160, train=False))  # scale 0.64
    batch = detection_collate([dataset[i] for i in range(len(dataset))])
    targets = DetectionTask.to_original(batch["target"], batch)
    preds = []
    for record in records:
        mine = [r for r in results if r["image_id"] == record.image_id]
        preds.append({"boxes": box_convert(torch.tensor([r["bbox"] for r in mine], dtype=torch.float32),
                                           "xywh", "xyxy"),
                      "scores": torch.tensor([r["score"] for r in mine]), "labels": torch.ones(len(mine), dtype=torch.long)})
    metric = DetectionMetrics()
    metric.update(preds, targets)
    ours = metric.compute()
    names = {"map": 0, "map_small": 3, "map_medium": 4, "map_large": 5, "mar_100": 8,
             "mar_small": 9, "mar_medium": 10, "mar_large": 11}
    for name, index in names.items():
        assert ours[name].item() == pytest.approx(stats[index], abs=1e-6), name
    # the case discriminates: by box area (what dropping ``area`` gave) the size buckets come out otherwise
    by_box = DetectionMetrics()
    by_box.update(preds, [{k: v for k, v in t.items() if k != "area"} for t in targets])
    by_box = by_box.compute()
    assert any(abs(by_box[n].item() - ours[n].item()) > 0.05 for n in ("map_small", "map_medium", "map_large"))


def test_a_split_without_ground_truth_gives_minus_one_not_nan():
    """COCOeval's -1 ("undefined") for every value, the VOC numbers included, when no image has an object."""
    metric = DetectionMetrics(prefix="test/")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "iscrowd": torch.zeros(0, dtype=torch.long), "area": torch.zeros(0, dtype=torch.float64)}
    metric.update([{"boxes": torch.tensor([[0, 0, 10, 10.]]), "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([1])}], [empty])
    values = DetectionMetrics.scalars(metric.compute())
    assert len(values) == 11
    for name, value in values.items():
        assert value.item() == -1.0, name


def test_coco_and_voc_keep_one_copy_of_the_detections(monkeypatch):
    """Both members hold the same per-image states: the collection updates (and syncs) them once, not twice."""
    from densecnn.metrics import detection

    calls = []
    original = detection.VOCMeanAP.update
    monkeypatch.setattr(detection.VOCMeanAP, "update", lambda self, *a, **k: (calls.append(1), original(self, *a, **k)))
    metrics = detection.DetectionMetrics()
    pred = [{"boxes": torch.tensor([[0., 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    target = [{"boxes": torch.tensor([[0., 0, 10, 10]]), "labels": torch.tensor([1])}]
    for _ in range(3):
        metrics.update(pred, target)
    values = detection.DetectionMetrics.scalars(metrics.compute())
    assert calls == [] and float(values["map_voc"]) == 1.0 and float(values["map"]) == 1.0
