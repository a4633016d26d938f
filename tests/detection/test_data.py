"""COCO/VOC readers, bad input, bbox-aware transforms, proposals, the synthetic generator and the DataModules."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data import DataError
from densecnn.data.detection import (DetectionDataset, DetectionRecord, build_detection_pipeline,
                                     detection_collate, load_proposals, read_coco, read_voc, selective_search)
from densecnn.data.synthetic.detection import DETECTION_CLASSES, write_detection_dataset
from tests.detection.helpers import write_voc


def _coco(tmp_path, annotations, categories=({"id": 7, "name": "a"}, {"id": 3, "name": "b"}), size=(40, 30)):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / "img" / "x.png")
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / "img" / "empty.png")
    data = {"images": [{"id": 1, "file_name": "x.png", "width": size[0], "height": size[1]},
                       {"id": 2, "file_name": "empty.png", "width": size[0], "height": size[1]}],
            "annotations": annotations, "categories": list(categories)}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_read_coco_boxes_labels_and_empty_images(tmp_path):
    path = _coco(tmp_path, [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5, 5, 4, 4], "iscrowd": 1}])
    records, category_ids, names = read_coco(path, tmp_path / "img")
    assert category_ids == [3, 7] and names == ["b", "a"]  # labels 1..K follow sorted category ids
    first, empty = records
    np.testing.assert_allclose(first.boxes, [[1, 2, 11, 7], [5, 5, 9, 9]])
    assert first.labels.tolist() == [2, 1] and first.iscrowd.tolist() == [0, 1]
    assert len(empty.boxes) == 0 and empty.boxes.shape == (0, 4)


def test_coco_clips_outside_boxes_and_drops_zero_area_with_warnings(tmp_path):
    path = _coco(tmp_path, [{"id": 21, "image_id": 1, "category_id": 7, "bbox": [-5, 20, 60, 20]},
                            {"id": 22, "image_id": 1, "category_id": 7, "bbox": [3, 3, 0, 5]}])
    with pytest.warns(UserWarning) as caught:
        records, _, _ = read_coco(path, tmp_path / "img")
    messages = " ".join(str(w.message) for w in caught)
    assert "clipped" in messages and "annotation id 21" in messages and "image 1" in messages
    assert "zero area" in messages and "annotation id 22" in messages
    np.testing.assert_allclose(records[0].boxes, [[0, 20, 40, 30]])


def test_coco_duplicate_image_id_is_an_error(tmp_path):
    """A repeated image id used to replace one image by the other and move its annotations onto it."""
    path = _coco(tmp_path, [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]}])
    data = json.loads(path.read_text())
    data["images"][1]["id"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"ann\.json: duplicate image id 1\b"):
        read_coco(path, tmp_path / "img")


def test_coco_non_finite_and_negative_boxes_are_reported_as_what_they_are(tmp_path):
    """NaN/infinite coordinates and inverted boxes are dropped (the degenerate-box policy) with a warning
    naming the annotation, its image and the actual problem (not "zero area" for a negative width)."""
    path = _coco(tmp_path, [{"id": 31, "image_id": 1, "category_id": 7, "bbox": [1, float("nan"), 5, 5]},
                            {"id": 32, "image_id": 1, "category_id": 7, "bbox": [1, 1, float("inf"), 5]},
                            {"id": 33, "image_id": 1, "category_id": 7, "bbox": [9, 1, -3, 5]},
                            {"id": 34, "image_id": 1, "category_id": 7, "bbox": [1, 9, 4, -2.5]},
                            {"id": 35, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 4]}])
    with pytest.warns(UserWarning) as caught:
        records, _, _ = read_coco(path, tmp_path / "img")
    messages = " ".join(str(w.message) for w in caught)
    assert "4 box(es)" in messages and "annotation id 35" not in messages
    assert "image 1 (x.png) annotation id 31: non-finite coordinate" in messages
    assert "annotation id 32: non-finite coordinate" in messages
    assert "annotation id 33: negative width -3" in messages
    assert "annotation id 34: negative height -2.5" in messages
    assert "zero area" not in messages
    np.testing.assert_allclose(records[0].boxes, [[1, 1, 5, 5]])


def test_voc_inverted_box_says_negative_width(tmp_path):
    root = write_voc(tmp_path / "VOC", {"a": [("dog", 0, (20, 1, 10, 5))]})
    # 1-based xmin 20 -> continuous 19; xmax 10: width 10 - 19 = -9
    with pytest.warns(UserWarning, match=r"image a annotation 0: negative width -9"):
        records = read_voc(root, "trainval")
    assert len(records[0].boxes) == 0


def test_coco_area_is_kept_and_scaled_with_the_boxes(tmp_path):
    """The annotation's area (COCO's size buckets use it) reaches the target scaled by scale ** 2, and
    ``to_original`` gives it back; without an area in the file, the box area stands in."""
    from tasks.detection.base import DetectionTask

    path = _coco(tmp_path, [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "area": 123.25},
                            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5, 5, 4, 4]}], size=(40, 30))
    records, _, _ = read_coco(path, tmp_path / "img")
    np.testing.assert_allclose(records[0].area, [123.25, 16.0])
    assert records[1].area.shape == (0,)
    dataset = DetectionDataset(records, build_detection_pipeline(100, train=False))  # scale 2.5
    batch = detection_collate([dataset[0], dataset[1]])
    np.testing.assert_allclose(batch["target"][0]["area"].numpy(), [123.25 * 2.5 ** 2, 16 * 2.5 ** 2], rtol=1e-6)
    assert batch["target"][0]["iscrowd"].tolist() == [0, 0] and batch["target"][1]["area"].shape == (0,)
    original = DetectionTask.to_original(batch["target"], batch)
    np.testing.assert_allclose(original[0]["area"].numpy(), [123.25, 16.0], rtol=1e-12)
    np.testing.assert_allclose(original[0]["boxes"].numpy(), records[0].boxes, atol=1e-4)


@pytest.mark.parametrize("annotation, message", [
    ({"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]}, "unknown category id 99"),
    ({"id": 6, "image_id": 42, "category_id": 7, "bbox": [1, 1, 2, 2]}, "image id 42"),
    ({"id": 8, "image_id": 1, "category_id": 7, "bbox": [1, 1]}, "malformed annotation id 8"),
])
def test_coco_bad_annotations_name_the_problem(tmp_path, annotation, message):
    path = _coco(tmp_path, [annotation])
    with pytest.raises(DataError, match=message):
        read_coco(path, tmp_path / "img")


def test_coco_missing_image_and_malformed_file(tmp_path):
    path = _coco(tmp_path, [])
    (tmp_path / "img" / "x.png").unlink()
    with pytest.raises(DataError, match=r"x\.png.*not found"):
        read_coco(path, tmp_path / "img")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"ann\.json: malformed"):
        read_coco(path, tmp_path / "img")
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"ann\.json: malformed COCO annotation file.*categories"):
        read_coco(path, tmp_path / "img")


def test_read_voc_difficult_and_coordinates(tmp_path):
    root = write_voc(tmp_path / "VOC2007", {"000001": [("dog", 0, (1, 1, 10, 20)), ("cat", 1, (5, 6, 30, 40))],
                                            "000002": []})
    records = read_voc(root, "trainval")
    assert [r.name for r in records] == ["000001", "000002"]
    np.testing.assert_allclose(records[0].boxes, [[0, 0, 10, 20], [4, 5, 30, 40]])  # 1-based -> continuous
    # a difficult object is ignored by evaluation but is no crowd region (COCO's crowd IoU rule must not apply)
    assert records[0].labels.tolist() == [12, 8] and records[0].difficult.tolist() == [0, 1]
    assert records[0].iscrowd.tolist() == [0, 0]
    assert len(records[1].labels) == 0
    dataset = DetectionDataset(records, build_detection_pipeline(64, train=False), keep_ignored=False)
    assert dataset[0]["target"]["labels"].tolist() == [12]  # training leaves difficult objects out
    dataset = DetectionDataset(records, build_detection_pipeline(64, train=False), keep_ignored=True)
    target = dataset[0]["target"]
    assert target["difficult"].tolist() == [0, 1] and target["iscrowd"].tolist() == [0, 0]


def test_voc_bad_inputs(tmp_path):
    root = write_voc(tmp_path / "VOC", {"a": [("unicorn", 0, (1, 1, 5, 5))]})
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        read_voc(root, "trainval")
    (root / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match=r"a\.xml: malformed"):
        read_voc(root, "trainval")
    with pytest.raises(DataError, match=r"test\.txt: image set file not found"):
        read_voc(root, "test")


def test_eval_pipeline_scales_boxes_exactly_and_pads(tmp_path):
    image = np.zeros((50, 100, 3), np.uint8)
    pipeline = build_detection_pipeline(200, train=False)
    out = pipeline(image=image, bboxes=np.array([[10, 5, 30, 45.0]]), labels=[1], iscrowd=[0])
    assert tuple(out["image"].shape) == (3, 200, 200)
    np.testing.assert_allclose(out["bboxes"], [[20, 10, 60, 90]], atol=1e-4)


def test_train_pipeline_keeps_boxes_on_their_objects():
    """After random scale, crop and flip every surviving box still frames its (white) object."""
    rng = np.random.default_rng(0)
    image = np.zeros((80, 80, 3), np.uint8)
    boxes = np.array([[5, 5, 25, 20], [40, 50, 70, 75]], np.float32)
    for x0, y0, x1, y1 in boxes.astype(int):
        image[y0:y1, x0:x1] = 255
    pipeline = build_detection_pipeline(64, train=True, mean=(0, 0, 0), std=(1, 1, 1), min_visibility=0.3)
    seen_flip = 0
    for seed in range(12):
        pipeline.set_random_seed(int(rng.integers(1 << 30)))
        out = pipeline(image=image, bboxes=boxes, labels=[1, 2], iscrowd=[0, 0])
        img = out["image"][0].numpy()
        for x0, y0, x1, y1 in np.asarray(out["bboxes"]):
            inside = img[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
            assert inside.size == 0 or inside.mean() > 0.9
            ring = img[max(0, int(y0) - 3):int(y1) + 3, max(0, int(x0) - 3):int(x1) + 3]
            assert ring.sum() <= img.sum()
        seen_flip += int(len(out["bboxes"]) > 0)
    assert seen_flip > 0


def test_synthetic_generator_is_deterministic_with_empty_images(tmp_path):
    a = write_detection_dataset(tmp_path / "a", image_size=48, splits={"train": 24}, empty_fraction=0.3)
    b = write_detection_dataset(tmp_path / "b", image_size=48, splits={"train": 24}, empty_fraction=0.3)
    ann_a = json.loads((a / "annotations" / "instances_train.json").read_text())
    assert ann_a == json.loads((b / "annotations" / "instances_train.json").read_text())
    assert (a / "train" / "000001.png").read_bytes() == (b / "train" / "000001.png").read_bytes()
    assert [c["name"] for c in ann_a["categories"]] == list(DETECTION_CLASSES)
    per_image = {im["id"]: 0 for im in ann_a["images"]}
    for ann in ann_a["annotations"]:
        per_image[ann["image_id"]] += 1
    counts = list(per_image.values())
    assert min(counts) == 0 and max(counts) >= 3  # empty images and several objects per image
    records, _, _ = read_coco(a / "annotations" / "instances_train.json", a / "train")
    assert len({int(c) for r in records for c in r.labels}) == len(DETECTION_CLASSES)


def test_selective_search_and_proposals_file(tmp_path, coco_root):
    records, _, _ = read_coco(coco_root / "annotations" / "instances_val.json", coco_root / "val")
    image = np.asarray(Image.open(records[0].path))
    boxes = selective_search(image, max_proposals=50)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < len(boxes) <= 50
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    path = tmp_path / "props.json"
    path.write_text(json.dumps({str(records[0].image_id): [[1, 2, 30, 40], [0, 0, 500, 500]]}))
    proposals = load_proposals(path)
    dataset = DetectionDataset(records[:1], build_detection_pipeline(192, train=False), proposals=proposals)
    sample = dataset[0]
    # proposals move with the image (x2 here) and are clipped to it
    np.testing.assert_allclose(sample["proposals"].numpy(), [[2, 4, 60, 80], [0, 0, 192, 192]], atol=1e-3)
    dataset = DetectionDataset(records[1:2], build_detection_pipeline(96, train=False), proposals=proposals)
    with pytest.raises(DataError, match="no region proposals for image"):
        dataset[0]
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="malformed proposals file"):
        load_proposals(path)


def test_collate_and_datamodules(coco_root, tmp_path):
    from tasks.datamodules.detection import CocoDetectionDataModule, VOCDetectionDataModule

    dm = CocoDetectionDataModule(str(coco_root), batch_size=4, image_size=96)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 96, 96) and len(batch["target"]) == 4
    assert batch["scale"].tolist() == [1.0] * 4 and dm.class_names == list(DETECTION_CLASSES)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 96, 96)
    synthetic = CocoDetectionDataModule(str(tmp_path / "fresh"), synthetic=True, synthetic_image_size=48,
                                        synthetic_splits={"train": 3, "val": 2})
    synthetic.prepare_data()
    synthetic.setup("test")  # no test split: falls back to val
    assert len(synthetic.test_set) == 2
    with pytest.raises(DataError, match="does not exist"):
        CocoDetectionDataModule(str(tmp_path / "none")).setup("fit")
    voc = write_voc(tmp_path / "VOC2007", {"1": [("dog", 0, (2, 2, 20, 20))], "2": []}, split="trainval")
    shutil.copy(voc / "ImageSets" / "Main" / "trainval.txt", voc / "ImageSets" / "Main" / "test.txt")
    vdm = VOCDetectionDataModule(str(voc), batch_size=2, image_size=64)
    vdm.setup("fit")
    batch = next(iter(vdm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and len(vdm.class_names) == 20


def test_collate_empty_targets():
    record = DetectionRecord(1, "", 10, 10)
    sample = {"image": torch.zeros(3, 8, 8), "target": {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                                                          "iscrowd": torch.zeros(0)},
              "image_id": record.image_id, "path": "p", "scale": 1.0, "orig_size": (10, 10)}
    batch = detection_collate([sample, sample])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image_id"].tolist() == [1, 1]


def test_image_size_is_the_content_of_a_non_square_photo(tmp_path):
    """A 100x75 photo in a 128 px square: the evaluation pipeline scales by 1.28 and pads at the bottom, so the
    image occupies 96 rows and 128 columns; a tall one the other way round. Training crops/flips stay bounded."""
    records = []
    for i, (w, h) in enumerate([(100, 75), (60, 120)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)
        records.append(DetectionRecord(i, str(path), w, h, boxes=np.array([[5, 5, 30, 30]], np.float32),
                                       labels=np.array([1]), iscrowd=np.array([0])))
    evaluation = DetectionDataset(records, build_detection_pipeline(128, train=False))
    batch = detection_collate([evaluation[0], evaluation[1]])
    assert batch["image_size"].tolist() == [[96, 128], [128, 64]]
    assert batch["target"][0]["labels"].tolist() == [1] and len(batch["target"][0]["boxes"]) == 1
    training = DetectionDataset(records, build_detection_pipeline(128, train=True, hflip=0.0), keep_ignored=False)
    for _ in range(5):
        sample = training[0]
        h, w = sample["image_size"]
        assert 0 < h <= 128 and 0 < w <= 128
        # the last content row holds image, everything below it is padding (zeros before normalisation)
        image, padding = sample["image"], sample["image"][:, -1, -1]
        assert not torch.allclose(image[:, h - 1, 0], padding)
        assert torch.allclose(image[:, h:, :], padding[:, None, None].expand_as(image[:, h:, :]))
