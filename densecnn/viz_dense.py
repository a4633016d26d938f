"""Pictures of dense predictions: colour-mapped depth, RGB-encoded normals, label maps with a palette,
overlays, and the side-by-side panel (input | prediction | ground truth) the dense task logs."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .constants import IGNORE_LABEL
from .data.dense import encode_normals
from .viz import image_grid

# Anchor colours of a perceptually ordered map (dark violet -> red -> yellow, like "inferno"), interpolated
# to 256 entries; near is bright, far is dark.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float64)
DEPTH_COLOURMAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                            for c in range(3)], -1).round().astype(np.uint8)
MISSING = np.array([0, 0, 0], dtype=np.uint8)


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for ``num_classes`` labels (golden-ratio hues), (K, 3) uint8."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65, 0.95)]
                     for k in range(num_classes)], dtype=np.uint8)


def colourise_depth(depth: np.ndarray | torch.Tensor, vmin: float | None = None,
                    vmax: float | None = None) -> np.ndarray:
    """(H, W) depth in metres -> HxWx3 uint8 (near = bright); missing (0/NaN) pixels are black. The range
    defaults to the valid pixels' 2nd-98th percentiles."""
    depth = np.asarray(torch.as_tensor(depth).detach().float().cpu())
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    lo = vmin if vmin is not None else float(np.percentile(depth[valid], 2))
    hi = vmax if vmax is not None else float(np.percentile(depth[valid], 98))
    scaled = 1.0 - (np.nan_to_num(depth) - lo) / max(hi - lo, 1e-6)
    out = DEPTH_COLOURMAP[(np.clip(scaled, 0, 1) * 255).astype(np.int64)]
    out[~valid] = MISSING
    return out


def normals_to_rgb(normals: np.ndarray | torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W, 3) normals -> HxWx3 uint8 with the same encoding as the normals PNG files."""
    n = np.asarray(torch.as_tensor(normals).detach().float().cpu())
    if n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)
    return encode_normals(n)


def labels_to_rgb(labels: np.ndarray | torch.Tensor, palette: np.ndarray,
                  ignore_index: int = IGNORE_LABEL) -> np.ndarray:
    """(H, W) class ids -> HxWx3 uint8 via ``palette``; ignored pixels are black."""
    labels = np.asarray(torch.as_tensor(labels).detach().cpu()).astype(np.int64)
    known = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    out[known] = palette[labels[known]]
    return out


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour map over an HxWx3 uint8 image (black, i.e. ignored, pixels keep the image)."""
    blend = (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).round().astype(np.uint8)
    keep = (colours == 0).all(-1)
    blend[keep] = image[keep]
    return blend


def render_target(target: str, value, palette: np.ndarray | None = None, depth_range=None) -> np.ndarray:
    """A colour picture of one dense map: colour-mapped depth, RGB-encoded normals or palette labels.

    Args:
        target: ``depth``, ``normals`` or ``semantic``.
        value: the map.
        palette: colours per class for labels (default: a generated palette).
        depth_range: (min, max) metres of the colour map (default: the map's own range).
    """
    if target == "depth":
        return colourise_depth(value, *(depth_range or (None, None)))
    if target == "normals":
        return normals_to_rgb(value)
    return labels_to_rgb(value, palette if palette is not None else default_palette(int(np.max(value)) + 1))


def dense_panel(images: Sequence[np.ndarray], predictions: dict[str, Sequence], targets: dict[str, Sequence],
                palette: np.ndarray | None = None, cell: int = 128) -> np.ndarray:
    """One row per sample: input, then for each target its prediction and its ground truth, captioned.
    ``predictions``/``targets`` map a target name to per-sample maps (depth (H, W) metres, normals (3, H, W),
    semantic (H, W) ids)."""
    tiles, captions = [], []
    names = list(predictions)
    for i, image in enumerate(images):
        tiles.append(image)
        captions.append("input")
        for name in names:
            truth = targets.get(name)
            depth_range = None
            if name == "depth" and truth is not None:  # the same colour scale for prediction and truth
                t = np.asarray(torch.as_tensor(truth[i]).float().cpu())
                valid = np.isfinite(t) & (t > 0)
                if valid.any():
                    depth_range = (float(np.percentile(t[valid], 2)), float(np.percentile(t[valid], 98)))
            tiles.append(render_target(name, predictions[name][i], palette, depth_range))
            captions.append(f"{name} pred")
            if truth is not None:
                tiles.append(render_target(name, truth[i], palette, depth_range))
                captions.append(f"{name} true")
    columns = len(tiles) // len(images)
    return image_grid(tiles, captions, columns=columns, cell=cell)
