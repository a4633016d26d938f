"""Drawing helpers every ``densecnn.explain`` picture shares: labelled grids, heat-map overlays with colour bars,
saving. Matplotlib figures on their own Agg canvas (``new_figure``: no pyplot, no display needed); each function returns
a ``Figure`` that ``save_figure`` writes, or ``figure_to_array`` turns into an HxWx3 uint8 image for a logger.

Tiles are normalised one by one to [0, 1] (``normalise_tile``), the convention of Zeiler & Fergus's and
Krizhevsky's filter pictures: a kernel's sign pattern is what matters, not its scale.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(rows: int = 1, columns: int = 1, figsize: tuple[float, float] = (4.0, 3.5)):
    """A figure on its own Agg canvas and its ``rows x columns`` axes (a 2-D array). No pyplot: no global
    backend is set or changed (servers need no display, notebooks keep theirs, and nothing needs closing);
    a notebook shows the returned ``Figure`` as a PNG."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, columns, squeeze=False)


def to_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as a float HxW or HxWxC numpy array: CHW tensors/arrays (C in 1, 3) are moved to HWC, a single
    channel is squeezed to HxW, uint8 is scaled to [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an image of 2 or 3 dimensions (HxW, HxWxC or CxHxW), got shape {array.shape}")
    return array


def normalise_tile(tile: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(x - min) / (max - min)`` over the whole tile, as HWC float; a constant tile becomes 0.5 grey."""
    array = to_hwc(tile)
    low, high = float(array.min()), float(array.max())
    if high - low < 1e-12:
        return np.full_like(array, 0.5)
    return (array - low) / (high - low)


def labelled_grid(tiles: Sequence[np.ndarray | torch.Tensor], labels: Sequence[str] | None = None, *,
                  columns: int = 8, row_labels: Sequence[str] | None = None, title: str | None = None,
                  normalise: bool = True, cmap: str = "gray", tile_inches: float = 1.3) -> Figure:
    """Tiles on a grid of ``columns``, each with its label under it (e.g. ``"conv2 ch5 act 3.1"``).

    ``tiles``: images as HxW, HxWx3 or CxHxW (numpy or tensors; sizes may differ). ``normalise`` rescales each
    tile to [0, 1] (``normalise_tile``); otherwise floats are clipped to [0, 1]. Single-channel tiles use
    ``cmap``. ``row_labels`` name each row at its left (a layer and channel in the Zeiler-Fergus grid).
    Returns the figure (``save_figure`` writes it).
    """
    if not len(tiles):
        raise ValueError("labelled_grid needs at least one tile")
    if labels is not None and len(labels) != len(tiles):
        raise ValueError(f"labelled_grid: {len(labels)} labels for {len(tiles)} tiles")
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"labelled_grid: {len(row_labels)} row labels for {rows} rows")
    label_h = 0.25 if labels is not None else 0.05
    fig, axes = new_figure(rows, columns, (columns * tile_inches + (1.0 if row_labels else 0.0),
                                           rows * (tile_inches + label_h) + (0.4 if title else 0.0)))
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(tiles):
            ax.axis("off")
            continue
        tile = normalise_tile(tiles[i]) if normalise else np.clip(to_hwc(tiles[i]), 0.0, 1.0)
        ax.imshow(tile, cmap=cmap if tile.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        if labels is not None:
            ax.set_xlabel(labels[i], fontsize=7)
    if row_labels is not None:
        for r, text in enumerate(row_labels):
            axes[r, 0].set_ylabel(text, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def resize_heat(heat: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized (bilinearly) to ``size = (H, W)``: Grad-CAM's coarse maps drawn over the input."""
    heat_t = torch.as_tensor(np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat),
                             dtype=torch.float32)
    if heat_t.ndim != 2:
        raise ValueError(f"a heat map must be 2-D (HxW), got shape {tuple(heat_t.shape)}")
    if tuple(heat_t.shape) == tuple(size):
        return heat_t.numpy()
    return F.interpolate(heat_t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def heatmap_overlay(image: np.ndarray | torch.Tensor, heat: np.ndarray | torch.Tensor, colourbar: bool = True, *,
                    alpha: float = 0.5, cmap: str = "jet", title: str | None = None, vmin: float | None = None,
                    vmax: float | None = None, label: str = "", ax=None) -> Figure:
    """``heat`` (HxW, any size: resized to the image) drawn over ``image`` (HxWx3, CxHxW or HxW in [0, 1] or
    uint8) with a colour bar giving the heat's values (``label`` names them, e.g. "|gradient|").

    Pass ``ax`` to draw into an existing axes (panels of several overlays); the figure it belongs to is returned.
    """
    base = to_hwc(image)
    if base.max() > 1.0 or base.min() < 0.0:
        base = normalise_tile(base)
    values = resize_heat(heat, base.shape[:2])
    if ax is None:
        fig, axes = new_figure(1, 1, (4.2 if colourbar else 3.5, 3.5))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.imshow(base, cmap="gray" if base.ndim == 2 else None, vmin=0.0, vmax=1.0)
    shown = ax.imshow(values, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colourbar:
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        if label:
            bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), creating folders; a pyplot figure is
    closed so long loops do not accumulate figures. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _close(fig)
    return path


def _close(fig: Figure) -> None:
    import matplotlib.pyplot as plt  # only pyplot-managed figures (made by a caller) need closing

    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)


def figure_to_array(fig: Figure, *, close: bool = True) -> np.ndarray:
    """The figure rendered as an HxWx3 uint8 array (what loggers' ``log_image`` take); a pyplot figure is
    closed unless ``close=False``."""
    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if close:
        _close(fig)
    return array
