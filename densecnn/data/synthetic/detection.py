"""The embedded detection dataset: several shapes per image on textured backgrounds, written in COCO format.

Layout (the real COCO layout, read back by ``densecnn.data.detection.read_coco`` like any COCO data)::

    root/annotations/instances_<split>.json
    root/<split>/<image id>.png

Every image holds 0 to ``max_objects`` shapes of the classes in ``classes`` (drawn with the classification
generator's ``draw_shape``) at random sizes, positions and rotations, each in its own colour against a
textured background; overlaps are limited so every object stays visible. About ``empty_fraction`` of the
images hold no object at all: they are valid samples (pure background) for training and evaluation. Boxes
are the tight extent of the drawn pixels, so they are exact.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .classification import draw_shape
from .common import contrasting_colours, textured_background, write_atomically

DETECTION_CLASSES = ("disk", "triangle", "cross")
DEFAULT_DETECTION_SPLITS = {"train": 240, "val": 60, "test": 60}  # images per split
_SUPERSAMPLE = 4


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_detection_image(rng: np.random.Generator, size: int, classes: Sequence[str], max_objects: int,
                           empty_fraction: float, min_radius: float, max_radius: float
                           ) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image (uint8 HxWx3) and its objects as ``(class index, [x0, y0, x1, y1])`` in pixels."""
    big = size * _SUPERSAMPLE
    bg, _ = contrasting_colours(rng)
    canvas = Image.fromarray(textured_background(rng, big, big, bg))
    count = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    objects: list[tuple[int, list[float]]] = []
    for _ in range(count):
        for _attempt in range(20):
            cls = int(rng.integers(len(classes)))
            r = rng.uniform(min_radius, max_radius) * big
            cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
            mask = Image.new("L", (big, big), 0)
            draw_shape(ImageDraw.Draw(mask), classes[cls], cx, cy, r, rng.uniform(0, math.pi), 255)
            ys, xs = np.nonzero(np.asarray(mask))
            if len(xs) == 0:
                continue
            box = [xs.min() / _SUPERSAMPLE, ys.min() / _SUPERSAMPLE, (xs.max() + 1) / _SUPERSAMPLE,
                   (ys.max() + 1) / _SUPERSAMPLE]
            if all(_iou(box, other) < 0.15 for _, other in objects):
                # each object its own colour, far from the background's: colour never tells the class
                while True:
                    fg = rng.integers(0, 256, size=3)
                    if np.linalg.norm(fg - bg) >= 120:
                        break
                canvas.paste(Image.new("RGB", (big, big), tuple(int(c) for c in fg)), (0, 0), mask)
                objects.append((cls, [round(v, 2) for v in box]))
                break
    image = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))
    return image, objects


def coco_dict(images: list[dict], annotations: list[dict], classes: Sequence[str]) -> dict:
    """A COCO instances document (``images``, ``annotations``, ``categories`` with ids from 1).

    Args:
        images: the COCO image entries.
        annotations: the COCO annotation entries.
        classes: category names, in id order.
    """
    return {"info": {"description": "densecnn synthetic shapes (deterministic)"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]}


def write_detection_dataset(root: str | os.PathLike, *, image_size: int = 128, seed: int = 0,
                            splits: dict[str, int] | None = None, classes: Sequence[str] = DETECTION_CLASSES,
                            max_objects: int = 4, empty_fraction: float = 0.1, min_radius: float = 0.08,
                            max_radius: float = 0.22) -> Path:
    """Write the dataset under ``root`` (which must be empty); the same bytes for the same arguments.

    ``min_radius``/``max_radius`` are fractions of the image side, so objects span COCO's small and medium
    sizes at the default 128 px.
    """
    splits = dict(splits or DEFAULT_DETECTION_SPLITS)

    def write(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        next_image_id, next_ann_id = 1, 1
        for split_index, (split, count) in enumerate(sorted(splits.items())):
            rng = np.random.default_rng([seed, split_index])
            (tmp / split).mkdir()
            images, annotations = [], []
            for _ in range(count):
                image, objects = render_detection_image(rng, image_size, classes, max_objects, empty_fraction,
                                                        min_radius, max_radius)
                file_name = f"{next_image_id:06d}.png"
                Image.fromarray(image).save(tmp / split / file_name, optimize=False)
                images.append({"id": next_image_id, "file_name": file_name, "width": image_size,
                               "height": image_size})
                for cls, (x0, y0, x1, y1) in objects:
                    w, h = round(x1 - x0, 2), round(y1 - y0, 2)
                    annotations.append({"id": next_ann_id, "image_id": next_image_id, "category_id": cls + 1,
                                        "bbox": [x0, y0, w, h], "area": round(w * h, 2), "iscrowd": 0})
                    next_ann_id += 1
                next_image_id += 1
            (tmp / "annotations" / f"instances_{split}.json").write_text(
                json.dumps(coco_dict(images, annotations, classes)))

    return write_atomically(root, write)
