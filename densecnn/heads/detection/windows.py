"""Image regions for the network: R-CNN's warped proposals with context, OverFeat's window grid."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import roi_align


def context_boxes(boxes: torch.Tensor, crop_size: int, context: int = 16) -> torch.Tensor:
    """R-CNN's context padding (Girshick et al. 2014, Appendix A): dilate each box about its centre so that,
    once warped to ``crop_size``, the original box is surrounded by exactly ``context`` pixels of image."""
    if context <= 0:
        return boxes
    factor = crop_size / (crop_size - 2.0 * context)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * factor / 2, (boxes[:, 3] - boxes[:, 1]) * factor / 2
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def warp_regions(images: torch.Tensor, boxes: Sequence[torch.Tensor] | torch.Tensor, size: int) -> torch.Tensor:
    """Crop every box of every image and warp it (anisotropically, bilinear) to ``size`` x ``size``: R-CNN's
    "warp each region" (S3 L4007-4143). Parts of a box outside the image read as 0, the dataset mean once
    images are normalised, as R-CNN pads with the mean. ``boxes``: one ``(N_i, 4)`` tensor per image, or one
    ``(K, 5)`` tensor of ``(image index, x0, y0, x1, y1)`` rows (what a chunk of a batch's regions is).
    Returns ``(number of boxes, C, size, size)``."""
    rois = boxes.to(images.dtype) if isinstance(boxes, torch.Tensor) else [b.to(images.dtype) for b in boxes]
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def window_grid(rows: int, cols: int, stride: float, window: float, device=None,
                ratios: Sequence[float] = (1.0,)) -> torch.Tensor:
    """The boxes behind a ``rows`` x ``cols`` score map: position (i, j) sees the ``window``-pixel square whose
    corner is at (j * stride, i * stride), and stands for one box per aspect ratio ``r = height / width``,
    centred on that square and of its area (``window / sqrt(r)`` wide, ``window * sqrt(r)`` tall; r = 1 is the
    square itself). ``(rows * cols * len(ratios), 4)`` xyxy, row-major like the map, ratios innermost."""
    ys, xs = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float32) * stride,
                            torch.arange(cols, device=device, dtype=torch.float32) * stride, indexing="ij")
    cx, cy = xs.reshape(-1, 1) + window / 2, ys.reshape(-1, 1) + window / 2
    root = torch.tensor([float(r) for r in ratios], device=device).sqrt()
    half_w, half_h = window / 2 / root, window / 2 * root
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2).reshape(-1, 4)
