"""Learned kernels: the first layer's as a picture, every layer's as weight statistics.

Krizhevsky et al. show conv1's 96 kernels (S1 L165, L202): the 48 on GPU 1 come out colour-agnostic, the 48 on
GPU 2 colour-specific. Our AlexNet keeps the towers as ``groups=2`` in conv2/4/5 (conv1 itself is one
convolution), so conv1's kernels 0..47 feed the first group of conv2 and 48..95 the second: the towers of a
first layer are read from the ``groups`` of the next convolution, and drawn side by side. Deeper kernels have
too many input channels to look at, so they are summarised (Ranzato's advice, S3 L3793-3874: good filters
are structured and uncorrelated, bad ones noisy or collapsed): per-filter norms and a histogram of weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..errors import UserError
from .pictures import labelled_grid, new_figure, normalise_tile

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolutions in definition order (``named_modules``), as ``(path, module)``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _CONVS)]


def first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of a model's first convolution (whose kernels are pictured, Zeiler & Fergus Fig. 6).

    Args:
        model: any network.

    Raises:
        UserError: the model has no convolution.
    """
    convs = conv_layers(model)
    if not convs:
        raise UserError(f"{type(model).__name__} has no convolution to show the kernels of")
    return convs[0]


def towers(model: nn.Module, layer: str | None = None) -> int:
    """How many towers a convolution's kernels form: the ``groups`` of the convolution that reads them (the next
    one), 1 when it is a plain convolution (AlexNet: 2; ``alexnet_1tower``: 1)."""
    convs = conv_layers(model)
    names = [n for n, _ in convs]
    name = layer or names[0]
    if name not in names:
        raise UserError(f"{name!r} is not a convolution of {type(model).__name__} (they are {names[:8]}...)")
    i = names.index(name)
    return convs[i + 1][1].groups if i + 1 < len(convs) else 1


def kernel_tiles(weight: torch.Tensor) -> list[np.ndarray]:
    """Each kernel (out x in x kh x kw) as a picture normalised to [0, 1] on its own: RGB when it reads three
    channels (a first layer on colour images), else the mean over its input channels, in grey. A 3-D (video)
    kernel shows its middle frame."""
    weight = weight.detach().float().cpu()
    if weight.dim() == 5:
        weight = weight[:, :, weight.shape[2] // 2]
    if weight.dim() != 4:
        raise UserError(f"kernel pictures need 2-D or 3-D convolution weights, got shape {tuple(weight.shape)}")
    # to HxWx3 / HxW here: a 3x3 kernel's (3, 3, 3) shape would not say which axis is the colour
    kernels = weight.permute(0, 2, 3, 1) if weight.shape[1] == 3 else weight.mean(dim=1)
    return [normalise_tile(k) for k in kernels]


def filter_picture(model: nn.Module, layer: str | None = None, *, columns: int | None = None) -> Figure:
    """The kernels of ``layer`` (default: the first convolution) as tiles, each tower in its own block of
    columns, side by side, with a blank column between (AlexNet's conv1: kernels 0-47 left, 48-95 right)."""
    name, conv = (layer, model.get_submodule(layer)) if layer else first_conv(model)
    if not isinstance(conv, _CONVS):
        raise UserError(f"{name!r} is a {type(conv).__name__}, not a convolution")
    tiles = kernel_tiles(conv.weight)
    n_towers = towers(model, name)
    per_tower = len(tiles) // n_towers
    cols = columns or max(1, int(np.ceil(np.sqrt(per_tower))))
    rows = int(np.ceil(per_tower / cols))
    blank = np.ones_like(tiles[0])
    grid: list[np.ndarray] = []
    for r in range(rows):
        for t in range(n_towers):
            block = tiles[t * per_tower:(t + 1) * per_tower]
            grid += [block[r * cols + c] if r * cols + c < len(block) else blank for c in range(cols)]
            if t < n_towers - 1:
                grid.append(blank)
    width = n_towers * cols + n_towers - 1
    tower_text = f", {n_towers} towers of {per_tower} side by side" if n_towers > 1 else ""
    return labelled_grid(grid, columns=width, normalise=False, tile_inches=0.45,
                         title=f"{name}: {len(tiles)} kernels {tuple(conv.weight.shape[2:])}{tower_text}")


@dataclass
class WeightStats:
    """One layer's weights: ``norms`` is each output filter's L2 norm."""

    layer: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    norms: torch.Tensor


def weight_statistics(model: nn.Module, layers: list[str] | None = None) -> list[WeightStats]:
    """Statistics of every convolution's and linear layer's weight (or of ``layers``), in definition order."""
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, (*_CONVS, nn.Linear))] if layers is None \
        else [(n, model.get_submodule(n)) for n in layers]
    stats = []
    for name, module in chosen:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise UserError(f"layer {name!r} ({type(module).__name__}) has no weight")
        w = weight.detach().float().cpu()
        stats.append(WeightStats(name, tuple(w.shape), w.mean().item(), w.std().item(), w.min().item(),
                                 w.max().item(), w.flatten(1).norm(dim=1)))
    return stats


def weight_statistics_picture(stats: list[WeightStats], model: nn.Module | None = None, bins: int = 50) -> Figure:
    """Per layer: a histogram of its weights (needs ``model``) or nothing, and its filters' norms in order."""
    fig, axes = new_figure(len(stats), 2 if model is not None else 1,
                           (9 if model is not None else 5, 1.6 * len(stats) + 0.4))
    for row, s in zip(axes, stats):
        norm_ax = row[-1]
        norm_ax.bar(np.arange(len(s.norms)), s.norms.numpy(), width=1.0, color="tab:blue")
        norm_ax.set_ylabel("filter L2 norm", fontsize=7)
        norm_ax.set_title(f"{s.layer} {s.shape}: norms per filter", fontsize=8)
        if model is not None:
            w = model.get_submodule(s.layer).weight.detach().float().cpu().flatten().numpy()
            row[0].hist(w, bins=bins, color="tab:gray")
            row[0].set_title(f"{s.layer}: weights (mean {s.mean:.2g}, std {s.std:.2g})", fontsize=8)
        for ax in row:
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig
