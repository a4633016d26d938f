"""Helpers for the detection tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_voc(root: Path, objects: dict[str, list[tuple[str, int, tuple[int, int, int, int]]]],
              split: str = "trainval", size: tuple[int, int] = (64, 48)) -> Path:
    """A VOC20xx-style folder: ``objects`` maps image name -> [(class, difficult, (xmin, ymin, xmax, ymax))]."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    width, height = size
    for name, objs in objects.items():
        Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                      f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                      for c, d, b in objs)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{xml}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    return root
