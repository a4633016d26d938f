"""Draws docs/images/synthetic-data.png, the home page's figure: the embedded synthetic data of each task family.

Run once from the repository root (``python docs/images/make_home_figure.py``); the picture is committed. The
generators are seeded, so the picture is the same on every run. Top row: one image of each of the six shape
classes (classification). Bottom row: a detection image with its ground-truth boxes, then one synthetic room's
RGB, depth (near = bright) and surface normals (dense prediction).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from densecnn.data.dense import read_depth_png, read_normals_png
from densecnn.data.detection import read_coco
from densecnn.data.synthetic.classification import CLASS_NAMES, write_classification_dataset
from densecnn.data.synthetic.dense import write_dense_dataset
from densecnn.data.synthetic.detection import write_detection_dataset
from densecnn.viz import image_grid, save_png
from densecnn.viz_dense import colourise_depth, normals_to_rgb
from densecnn.viz_detection import draw_detections

OUT = Path(__file__).resolve().parent / "synthetic-data.png"
CELL = 144  # pixels per tile: five tiles make a 720 px wide picture, about the width of the page's text


def classification_tiles(root: Path) -> tuple[list[np.ndarray], list[str]]:
    """The first training image of each shape class, captioned with its class."""
    write_classification_dataset(root, image_size=32, per_class={"train": 1})
    return [np.asarray(Image.open(root / "train" / name / f"{name}_0000.png").convert("RGB"))
            for name in CLASS_NAMES], list(CLASS_NAMES)


def detection_tile(root: Path) -> np.ndarray:
    """The first training image with the most objects, its ground-truth boxes drawn and named."""
    write_detection_dataset(root, splits={"train": 8})
    records, _, class_names = read_coco(root / "annotations" / "instances_train.json", root / "train")
    record = max(records, key=lambda r: len(r.boxes))
    image = np.asarray(Image.open(record.path).convert("RGB"))
    return draw_detections(image, record.boxes, record.labels, class_names=class_names, min_size=256)


def dense_tiles(root: Path) -> list[np.ndarray]:
    """One synthetic room: RGB, depth and normals."""
    write_dense_dataset(root, splits={"train": 1})
    split = root / "train"
    name = min((split / "rgb").iterdir()).name
    return [np.asarray(Image.open(split / "rgb" / name).convert("RGB")),
            colourise_depth(read_depth_png(split / "depth" / name)),
            normals_to_rgb(read_normals_png(split / "normals" / name))]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shapes, names = classification_tiles(Path(tmp) / "shapes")
        pictures = shapes + [detection_tile(Path(tmp) / "boxes"), *dense_tiles(Path(tmp) / "rooms")]
    captions = names + ["detection", "room: RGB", "depth", "normals"]
    save_png(image_grid(pictures, captions, columns=5, cell=CELL), OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
