"""The embedded classification dataset: shapes on textured backgrounds, written as an ImageFolder tree.

Each class is a shape (disk, square, triangle, cross, ring, bars) drawn at a random size, position and
rotation in a random colour on a random textured background: colour and position carry no information,
so a classifier has to learn shape, which takes a CNN rather than a colour histogram.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .common import contrasting_colours, textured_background, write_atomically

CLASS_NAMES = ("disk", "square", "triangle", "cross", "ring", "bars")
DEFAULT_SPLITS = {"train": 200, "val": 50, "test": 50}  # images per class
_SUPERSAMPLE = 4


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    """Draw class ``name`` centred at (cx, cy) with radius ``r`` on a (supersampled) canvas."""
    if name == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(r * 0.35)))
    elif name == "square":
        h = r * 0.85
        draw.polygon(_rotated([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)],
                              angle, cx, cy), fill=fill)
    elif name == "triangle":
        pts = [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
               for k in range(3)]
        draw.polygon(pts, fill=fill)
    elif name == "cross":
        w = r * 0.3
        for pts in ([(cx - r, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx - r, cy + w)],
                    [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy + r), (cx - w, cy + r)]):
            draw.polygon(_rotated(pts, angle, cx, cy), fill=fill)
    elif name == "bars":
        w = r * 0.22
        for offset in (-r * 0.55, r * 0.55):
            pts = [(cx - r, cy + offset - w), (cx + r, cy + offset - w), (cx + r, cy + offset + w),
                   (cx - r, cy + offset + w)]
            draw.polygon(_rotated(pts, angle, cx, cy), fill=fill)
    else:
        raise ValueError(f"unknown shape {name!r}; shapes: {', '.join(CLASS_NAMES)}")


def render_classification_image(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    """Draw one image of the synthetic shapes dataset: a shape of ``class_name`` at a random size, position and
    angle on a textured background, supersampled then reduced.

    Args:
        rng: the generator (seeded per image, so datasets are deterministic).
        class_name: the shape to draw.
        size: the image side in pixels.

    Returns:
        An (size, size, 3) uint8 image.
    """
    bg, fg = contrasting_colours(rng)
    canvas = Image.fromarray(textured_background(rng, size * _SUPERSAMPLE, size * _SUPERSAMPLE, bg))
    r = rng.uniform(0.22, 0.42) * size * _SUPERSAMPLE
    margin = r + 1
    cx = rng.uniform(margin, size * _SUPERSAMPLE - margin)
    cy = rng.uniform(margin, size * _SUPERSAMPLE - margin)
    draw_shape(ImageDraw.Draw(canvas), class_name, cx, cy, r, rng.uniform(0, math.pi), tuple(int(c) for c in fg))
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))


def write_classification_dataset(root: str | os.PathLike, *, image_size: int = 32, seed: int = 0,
                                 per_class: dict[str, int] | None = None) -> Path:
    """Write ``root/<split>/<class>/<index>.png``, the same bytes for the same arguments."""
    per_class = dict(per_class or DEFAULT_SPLITS)

    def write(tmp: Path) -> None:
        for split_index, (split, count) in enumerate(sorted(per_class.items())):
            for class_index, name in enumerate(CLASS_NAMES):
                rng = np.random.default_rng([seed, split_index, class_index])
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    image = render_classification_image(rng, name, image_size)
                    Image.fromarray(image).save(folder / f"{name}_{i:04d}.png", optimize=False)

    return write_atomically(root, write)
