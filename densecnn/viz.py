"""Pictures for people: captioned image grids and a confusion-matrix heat map (PIL only, no GUI)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

GOOD, BAD, TEXT = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def to_uint8_images(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> list[np.ndarray]:
    """Undo ``Normalize`` on an NCHW batch and return HxWx3 uint8 arrays."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    images = (images * std_t + mean_t).clamp(0, 1).mul(255).round().byte()
    return [im.permute(1, 2, 0).numpy() for im in images]


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str] | None = None,
               caption_colours: Sequence[tuple[int, int, int]] | None = None, *, columns: int = 8,
               cell: int = 128) -> np.ndarray:
    """Tile images (each resized to ``cell`` pixels wide) with an optional caption bar under each."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    font = ImageFont.load_default()
    bar = 14 if captions is not None else 0
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * (cell + bar)), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for i, array in enumerate(images):
        tile = Image.fromarray(np.ascontiguousarray(array))
        scale = cell / max(tile.size)
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                           Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR)
        x, y = (i % columns) * cell, (i // columns) * (cell + bar)
        canvas.paste(tile, (x, y))
        if captions is not None:
            colour = caption_colours[i] if caption_colours is not None else (60, 60, 60)
            draw.rectangle([x, y + cell, x + cell - 1, y + cell + bar - 1], fill=colour)
            draw.text((x + 2, y + cell + 1), captions[i][: cell // 6], fill=TEXT, font=font)
    return np.asarray(canvas)


def confusion_matrix_image(matrix: np.ndarray, class_names: Sequence[str], cell: int = 36) -> np.ndarray:
    """Row-normalised heat map (rows: true class, columns: predicted) with counts and class names."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    font = ImageFont.load_default()
    margin = 8 + 6 * max(len(name) for name in class_names)
    canvas = Image.new("RGB", (margin + n * cell + 4, margin + n * cell + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    for r in range(n):
        draw.text((4, margin + r * cell + cell // 3), class_names[r], fill=(0, 0, 0), font=font)
        draw.text((margin + r * cell + 2, margin - 12 - (r % 2) * 10), class_names[r][:8], fill=(0, 0, 0), font=font)
        for c in range(n):
            shade = int(255 * (1 - matrix[r, c] / totals[r, 0]))
            x, y = margin + c * cell, margin + r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x + 4, y + cell // 3), str(int(matrix[r, c])), fill=(0, 0, 0) if shade > 120 else TEXT,
                      font=font)
    return np.asarray(canvas)


def save_png(array: np.ndarray, path) -> None:
    """Write an (H, W) or (H, W, 3) uint8 array as a PNG.

    Args:
        array: the picture.
        path: the file.
    """
    Image.fromarray(np.ascontiguousarray(array)).save(path)
