"""Phone photos carry an EXIF orientation tag: images are read as displayed (the tag applied), for every task,
so a COCO annotation made on the displayed photo lands on its object."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from densecnn.data import DataError, read_rgb
from densecnn.data.detection import DetectionDataset, build_detection_pipeline, read_coco

# stored 60 wide x 40 tall with a red square at x 5..15, y 10..20; orientation 6 ("rotate 90 clockwise to
# display") shows it 40 wide x 60 tall, the square at x 40 - 20 .. 40 - 10 = 20..30, y 5..15
STORED_SQUARE = (5, 10, 15, 20)
DISPLAYED_BOX = [20, 5, 10, 10]  # COCO xywh in the displayed photo


def _photo(path):
    stored = np.full((40, 60, 3), 30, np.uint8)
    x0, y0, x1, y1 = STORED_SQUARE
    stored[y0:y1, x0:x1] = (230, 20, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    return stored


def _annotation(tmp_path, width, height):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "photo.jpg", "width": width, "height": height}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": DISPLAYED_BOX,
                                                 "area": 100, "iscrowd": 0}],
                                "categories": [{"id": 1, "name": "square"}]}))
    return path


def test_read_rgb_applies_the_exif_orientation(tmp_path):
    stored = _photo(tmp_path / "photo.jpg")
    image = read_rgb(tmp_path / "photo.jpg")
    assert image.shape == (60, 40, 3)
    # oracle: numpy's quarter turn clockwise of the stored pixels (JPEG noise aside)
    assert np.abs(image.astype(int) - np.rot90(stored, k=-1).astype(int)).mean() < 3


def test_a_box_in_displayed_coordinates_lands_on_the_object(tmp_path):
    _photo(tmp_path / "photo.jpg")
    records, _, _ = read_coco(_annotation(tmp_path, 40, 60), tmp_path)
    sample = DetectionDataset(records, build_detection_pipeline(120, train=False, mean=(0, 0, 0), std=(1, 1, 1)))[0]
    assert sample["image_size"] == (120, 80) and sample["scale"] == 2.0
    x0, y0, x1, y1 = sample["target"]["boxes"][0].round().int().tolist()
    assert [x0, y0, x1, y1] == [40, 10, 60, 30]
    inside = sample["image"][:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].mean(dim=(1, 2)) * 255
    assert inside[0] > 200 and inside[1] < 60  # red: the box is on the square


def test_an_annotation_of_the_stored_orientation_says_so(tmp_path):
    _photo(tmp_path / "photo.jpg")
    records, _, _ = read_coco(_annotation(tmp_path, 60, 40), tmp_path)
    with pytest.raises(DataError, match=r"photo\.jpg: image is 40x60 but its annotation says 60x40; swapping width "
                                        r"and height would match.*orientation tag is 6"):
        DetectionDataset(records, build_detection_pipeline(64, train=False))[0]
