"""Evaluation on the paths users take: VOC "difficult" objects are COCOeval's ``ignore``, not crowds; VOC
results name images like the devkit; ``test`` writes a per-class AP table and precision/recall curves whose
values are the metrics' own; COCO AP equals COCOeval on the original ground-truth JSON."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import box_convert

from densecnn.data.detection import VOC_CLASSES, DetectionDataset, build_detection_pipeline, detection_collate, read_coco, read_voc
from densecnn.metrics.detection import (COCO_STATS, DetectionMetrics, IgnoreAwareCOCOeval, VOCMeanAP,
                                        per_class_csv, per_class_markdown)
from tasks.detection.base import DetectionTask
from tests.detection.helpers import write_voc
from tests.detection.test_metrics import _random_scene


def _cocoeval(gt: dict | str, results: list[dict], evaluator=COCOeval) -> COCOeval:
    """pycocotools on a ground-truth dict (or JSON file) and a results list; accumulated and summarized."""
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
        else:
            coco = COCO(gt)
        result = evaluator(coco, coco.loadRes(results), "bbox")
        result.evaluate(), result.accumulate(), result.summarize()
    return result


def _ours(records, detections: dict[str, list], image_size: int = 96) -> dict:
    """The whole evaluation path: records -> DetectionDataset (resizing) -> to_original -> DetectionMetrics.
    ``detections`` maps an image name to ``[(xyxy in original pixels, score, label), ...]``."""
    dataset = DetectionDataset(records, build_detection_pipeline(image_size, train=False))
    batch = detection_collate([dataset[i] for i in range(len(dataset))])
    targets = DetectionTask.to_original(batch["target"], batch)
    preds = [{"boxes": torch.tensor([d[0] for d in detections.get(r.name, [])], dtype=torch.float32).reshape(-1, 4),
              "scores": torch.tensor([d[1] for d in detections.get(r.name, [])], dtype=torch.float32),
              "labels": torch.tensor([d[2] for d in detections.get(r.name, [])], dtype=torch.long)} for r in records]
    metric = DetectionMetrics()
    metric.update(preds, targets)
    return metric.compute()


# one VOC folder: image 000005 holds a dog, a difficult dog and a cat; 000007 a dog (VOC's 1-based corners)
VOC_OBJECTS = {"000005": [("dog", 0, (11, 11, 40, 40)), ("dog", 1, (61, 41, 100, 80)), ("cat", 0, (71, 11, 110, 30))],
               "000007": [("dog", 0, (21, 31, 60, 80))]}
DOG, CAT = 12, 8  # labels of the 20 VOC classes
# detections in original (continuous) pixels: several on the difficult dog, the first of them exact
DETECTIONS = {"000005": [([10, 10, 40, 40], 0.90, DOG), ([60, 40, 100, 80], 0.89, DOG),
                         ([62, 42, 100, 80], 0.85, DOG), ([58, 44, 98, 80], 0.80, DOG),
                         ([70, 10, 110, 30], 0.70, CAT), ([0, 60, 30, 90], 0.60, CAT)],
              "000007": [([22, 30, 60, 78], 0.75, DOG), ([0, 0, 15, 15], 0.88, DOG)]}


def _gt_json(records, flag: str | None) -> dict:
    """The VOC ground truth as COCO JSON; the difficult object gets ``flag`` (``ignore``/``iscrowd``) or is
    left out (None)."""
    images, annotations = [], []
    for r in records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": r.name})
        for box, label, difficult in zip(r.boxes.tolist(), r.labels.tolist(), r.difficult.tolist()):
            if difficult and flag is None:
                continue
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id, "category_id": label,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                **({flag: 1} if difficult and flag else {})})
    return {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(1, 21)]}


def _results(records, skip: tuple | None = None) -> list[dict]:
    by_name = {r.name: r.image_id for r in records}
    return [{"image_id": by_name[name], "category_id": label, "score": score,
             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
            for name, dets in DETECTIONS.items() for box, score, label in dets if (name, score) != skip]


def test_a_difficult_object_is_cocoevals_ignore_not_a_crowd(tmp_path):
    """Through read_voc and the resizing pipeline, COCO AP equals pycocotools' COCOeval with the difficult dog
    as ``ignore`` (the first detection on it counts neither way, the two further ones are false positives),
    which equals COCOeval without that object and its exact detection (scored below the dog hit, so it
    takes no slot of maxDets=1 the oracle would give to another); a crowd would swallow all three."""
    root = write_voc(tmp_path / "VOC2007", VOC_OBJECTS, split="test", size=(120, 90))
    records = read_voc(root, "test")
    ours = _ours(records, DETECTIONS)
    # oracle 1, stock pycocotools: the ignored object and the one detection it absorbs left out
    removed = _cocoeval(_gt_json(records, None), _results(records, skip=("000005", 0.89))).stats
    # oracle 2: COCOeval on a GT JSON file carrying "ignore": 1 (pycocotools' _prepare would overwrite the flag
    # with iscrowd, so the evaluator keeps it: IgnoreAwareCOCOeval)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(_gt_json(records, "ignore")))
    ignored = _cocoeval(str(gt_file), _results(records), IgnoreAwareCOCOeval).stats
    crowd = _cocoeval(_gt_json(records, "iscrowd"), _results(records)).stats
    for index, name in enumerate(COCO_STATS):
        assert ours[name].item() == pytest.approx(removed[index], abs=1e-6), name
        assert ours[name].item() == pytest.approx(ignored[index], abs=1e-6), name
    assert abs(ours["map"].item() - crowd[0]) > 0.05  # the crowd rule would have absorbed the false positives
    # VOC's own rule ignores every detection on a difficult object: dogs are hit, FP (0.88), hit -> AP50
    # (area) 1 * 1/2 + 2/3 * 1/2; cats hit, then a miss -> 1
    dog = 0.5 + 0.5 * 2 / 3
    assert ours["map_voc"].item() == pytest.approx((dog + 1.0) / 2, abs=1e-6)


def test_cocoeval_keeps_the_ignore_flag_pycocotools_overwrites():
    """The quirk IgnoreAwareCOCOeval exists for: stock COCOeval scores an ``ignore``-only object as ordinary."""
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0, "ignore": 1},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100,
                           "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.9}]
    assert _cocoeval(json.loads(json.dumps(gt)), results).stats[8] == pytest.approx(0.5)  # recall 1 of 2
    assert _cocoeval(json.loads(json.dumps(gt)), results, IgnoreAwareCOCOeval).stats[8] == pytest.approx(1.0)


def test_coco_equals_cocoeval_on_the_original_json_with_crowds_and_empty_images(tmp_path):
    """read_coco -> DetectionDataset -> to_original -> DetectionMetrics against COCOeval on the very same
    annotation file: non-square images of two orientations, a crowd region with detections inside it,
    an image without objects that has detections and one with neither."""
    from PIL import Image

    sizes = {1: (250, 200), 2: (120, 300), 3: (180, 140), 4: (90, 160)}  # width, height
    anns = [(1, 1, [10, 10, 40, 40], 0), (1, 2, [100, 20, 60, 50], 0), (1, 1, [150, 100, 80, 90], 1),
            (2, 1, [10, 30, 50, 120], 0), (2, 2, [60, 200, 40, 60], 0), (2, 2, [5, 5, 20, 20], 0)]
    images = []
    for image_id, (w, h) in sizes.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
    annotations = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3] * 0.7,
                    "iscrowd": crowd} for i, (im, c, b, crowd) in enumerate(anns)]
    gt_file = tmp_path / "instances_val.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    rng = np.random.default_rng(0)
    results = []
    for a in annotations:  # a jittered detection of every object, and a wrong-class one
        jitter = (np.asarray(a["bbox"]) + rng.normal(0, 3, 4)).round(2).tolist()
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": jitter,
                        "score": float(rng.uniform(0.3, 1))})
        results.append({"image_id": a["image_id"], "category_id": 3 - a["category_id"], "bbox": a["bbox"],
                        "score": float(rng.uniform(0.05, 0.5))})
    results += [{"image_id": 1, "category_id": 1, "bbox": [160, 110, 30, 30], "score": 0.95},  # inside the crowd
                {"image_id": 1, "category_id": 1, "bbox": [170, 130, 40, 40], "score": 0.93},
                {"image_id": 3, "category_id": 2, "bbox": [20, 20, 50, 40], "score": 0.8}]  # on an empty image
    stats = _cocoeval(str(gt_file), results).stats

    records, _, _ = read_coco(gt_file, tmp_path)
    detections = {r.name: [(box_convert(torch.tensor(d["bbox"]), "xywh", "xyxy").tolist(), d["score"],
                            d["category_id"]) for d in results if d["image_id"] == r.image_id] for r in records}
    ours = _ours(records, detections, image_size=128)
    for index, name in enumerate(COCO_STATS):
        assert ours[name].item() == pytest.approx(stats[index], abs=1e-6), name
    assert 0.2 < ours["map"].item() < 0.95


def test_coco_per_class_ap_equals_torchmetrics_class_metrics():
    """``map_per_class`` (read from one COCOeval run) equals torchmetrics' per-class evaluation, which reruns
    COCOeval on one category at a time."""
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = _random_scene(np.random.default_rng(5))
    ours = DetectionMetrics()
    ours.update(preds, targets)
    ours = ours.compute()
    # with pycocotools' own float64 thresholds (torchmetrics' defaults are float32 approximations of them)
    reference = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", class_metrics=True,
                                     iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                     rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())
    reference.update(preds, targets)
    reference = reference.compute()
    assert ours["classes"].tolist() == reference["classes"].tolist()
    np.testing.assert_allclose(ours["map_per_class"].numpy(), reference["map_per_class"].numpy(), atol=1e-6)
    assert ours["map_per_class"].min() > 0  # every class has objects and hits


def test_voc_per_class_table_on_a_hand_example():
    """Class 1: hit, miss, hit (a difficult one ignored) -> AP 0.5 + 0.5 * 2/3, 11-point (6 + 5 * 2/3) / 11;
    class 2: one object, never detected -> 0; class 3: only difficult objects -> undefined. The table holds
    the metric's own numbers, and the means of its rows are the metric's mAPs."""
    gt = {"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60.], [80, 80, 90, 90], [0, 40, 9, 49]]),
          "labels": torch.tensor([1, 1, 1, 2, 3]), "difficult": torch.tensor([0, 0, 1, 0, 1])}
    pred = {"boxes": torch.tensor([[0, 0, 10, 10], [70, 70, 80, 80], [20, 20, 30, 31], [50, 50, 60, 60.]]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.95]), "labels": torch.tensor([1, 1, 1, 1])}
    metric = DetectionMetrics(prefix="test/")
    metric.update([pred], [gt])
    computed = metric.compute()
    rows = DetectionMetrics.per_class_table(computed, num_classes=4)
    assert [r["gt_objects"] for r in rows] == [2, 1, 0, 0] and [r["ignored"] for r in rows] == [1, 0, 1, 0]
    assert rows[0]["ap50_voc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert rows[0]["ap50_voc07"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert rows[1]["ap50_voc"] == 0 and rows[1]["ap_coco"] == 0
    assert rows[2]["ap50_voc"] is None and rows[2]["ap_coco"] is None and rows[3]["ap50_voc"] is None
    voc = VOCMeanAP()
    voc.update([pred], [gt])
    own = voc.compute()
    assert own["map_voc_per_class"][:2].tolist() == pytest.approx([rows[0]["ap50_voc"], 0.0])
    assert computed["test/map_voc"].item() == pytest.approx(np.mean([rows[0]["ap50_voc"], 0.0]))
    # COCO's own per-class number for class 1 is the mean over the IoU thresholds; here every hit is exact
    # except [20, 20, 30, 31] (IoU 10/11 = 0.909: a hit up to 0.9), so 9 of 10 thresholds see both hits
    assert rows[0]["ap_coco"] == pytest.approx(computed["test/map_per_class"][0].item())
    named = [{**r, "class": f"c{r['label']}"} for r in rows]
    parsed = list(csv.DictReader(io.StringIO(per_class_csv(named))))
    assert float(parsed[0]["ap50_voc"]) == pytest.approx(rows[0]["ap50_voc"]) and parsed[2]["ap50_voc"] == ""
    markdown = per_class_markdown(named, {"ap50_voc": computed["test/map_voc"].item()})
    assert f"| c1 | {rows[0]['ap50_voc']:.4f} | {rows[0]['ap50_voc07']:.4f} |" in markdown
    assert markdown.splitlines()[-1].startswith(f"| **mean** | {computed['test/map_voc'].item():.4f} |")
    recall, precision = metric["voc"].curves[1]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


class ScriptedDetector(DetectionTask):
    """A detector that answers with fixed detections per image name (original pixels): the evaluation and
    prediction paths of DetectionTask without a network."""

    def __init__(self, script: dict[str, list], **kwargs):
        self.script = script
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        self.dummy = nn.Parameter(torch.zeros(1))

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.dummy.sum()}

    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        from pathlib import Path

        out = []
        for path, scale in zip(batch["path"], batch["scale"].tolist()):
            dets = self.script.get(Path(path).stem, [])
            out.append({"boxes": torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4) * scale,
                        "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32),
                        "labels": torch.tensor([d[2] for d in dets], dtype=torch.long)})
        return out


def _voc_run(tmp_path):
    import pytorch_lightning as pl

    from tasks.datamodules.detection import VOCDetectionDataModule

    root = write_voc(tmp_path / "VOC2007", VOC_OBJECTS, split="test", size=(120, 90))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n")
    data = VOCDetectionDataModule(str(root), batch_size=2, image_size=96, class_names=list(VOC_CLASSES))
    task = ScriptedDetector(DETECTIONS, num_classes=20, class_names=list(VOC_CLASSES))
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=str(tmp_path / "run"), enable_progress_bar=False,
                         enable_model_summary=False, logger=pl.loggers.CSVLogger(str(tmp_path / "run")))
    return task, data, trainer


def test_test_writes_the_per_class_table_and_pr_curves(tmp_path, capsys):
    task, data, trainer = _voc_run(tmp_path)
    logged = trainer.test(task, datamodule=data)[0]
    run_dir = task.run_dir
    rows = {r["class"]: r for r in csv.DictReader((run_dir / "test_per_class_ap.csv").open())}
    assert set(rows) == set(task.class_names)
    dog = 0.5 + 0.5 * 2 / 3  # as in test_a_difficult_object_is_cocoevals_ignore_not_a_crowd
    assert float(rows["dog"]["ap50_voc"]) == pytest.approx(dog) and float(rows["cat"]["ap50_voc"]) == 1.0
    assert rows["dog"]["gt_objects"] == "2" and rows["dog"]["ignored"] == "1" and rows["bird"]["ap50_voc"] == ""
    assert np.mean([float(rows["dog"]["ap_coco"]), float(rows["cat"]["ap_coco"])]) == pytest.approx(logged["test/map"], abs=1e-6)
    markdown = (run_dir / "test_per_class_ap.md").read_text()
    assert "| dog | " in markdown and "**mean**" in markdown
    picture = next((run_dir / "pictures").glob("test_pr_curve_*.png"))
    assert str(run_dir / "test_per_class_ap.csv") in capsys.readouterr().out
    from PIL import Image

    assert Image.open(picture).size == (600, 450)


def test_voc_predictions_name_images_like_the_devkit(tmp_path):
    task, data, trainer = _voc_run(tmp_path)
    trainer.predict(task, datamodule=data, return_predictions=False)
    results = json.loads(next((tmp_path / "run").rglob("detections.json")).read_text())
    assert {r["image_id"] for r in results} == {"000005", "000007"}
    first = max((r for r in results if r["image_id"] == "000005"), key=lambda r: r["score"])
    assert first["bbox"] == pytest.approx([10, 10, 30, 30], abs=0.01) and first["category_id"] == DOG  # xywh
