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


def warp_regions(images: torch.Tensor, boxes: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Crop every box of every image and warp it (anisotropically, bilinear) to ``size`` x ``size``: R-CNN's
    "warp each region" (S3 L4007-4143). Parts of a box outside the image read as 0, the dataset mean once
    images are normalised, as R-CNN pads with the mean. Returns ``(sum of boxes, C, size, size)``."""
    return roi_align(images, [b.to(images.dtype) for b in boxes], output_size=size, spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def window_grid(rows: int, cols: int, stride: float, window: float, device=None) -> torch.Tensor:
    """The input windows behind a ``rows`` x ``cols`` score map: position (i, j) sees the ``window``-pixel
    square whose corner is at (j * stride, i * stride). ``(rows * cols, 4)`` xyxy, row-major like the map."""
    ys, xs = torch.meshgrid(torch.arange(rows, device=device, dtype=torch.float32) * stride,
                            torch.arange(cols, device=device, dtype=torch.float32) * stride, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    return torch.stack([xs, ys, xs + window, ys + window], dim=1)
