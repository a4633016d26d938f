"""Tiny detection datasets generated per test session (COCO synthetic shapes; a hand-made VOC folder)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory) -> Path:
    """The synthetic shapes in COCO format, small: 12/6/6 images of 96 px."""
    from densecnn.data.synthetic.detection import write_detection_dataset

    root = tmp_path_factory.mktemp("det") / "shapes"
    write_detection_dataset(root, image_size=96, splits={"train": 12, "val": 6, "test": 6})
    return root
