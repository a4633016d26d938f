"""Layer response statistics (He et al., ResNet Fig. 7; S1 L560-564): the standard deviation of each layer's
output over a batch, per layer, in network order and sorted by magnitude, for models side by side (plain
against residual: residual functions respond more weakly, "closer to zero" than plain layers).

The paper measures "the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)";
that is the default here: every BatchNorm that follows a 3x3 convolution, else every convolution. A layer's
number is the standard deviation of each channel's responses (over the batch and positions), averaged over
its channels, so channels with different means do not inflate it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..errors import UserError
from .pictures import new_figure
from .receptive_field import layer_name
from .topk import capture_outputs

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_response_layers(model: nn.Module) -> list[str]:
    """ResNet Fig. 7's layers: the BN after each 3x3 convolution (in definition order), or every convolution
    in a network without BN."""
    modules = list(model.named_modules())
    chosen = []
    for (_, m), (next_name, nxt) in pairwise(modules):
        if isinstance(m, _CONVS) and isinstance(nxt, _BN) and tuple(m.kernel_size)[-2:] == (3, 3):
            chosen.append(next_name)
    return chosen or [name for name, m in modules if isinstance(m, _CONVS)]


def response_std(output: torch.Tensor) -> float:
    """Standard deviation of each channel's responses over batch and positions, averaged over channels."""
    per_channel = output.detach().float().transpose(0, 1).flatten(1)
    return per_channel.std(dim=1).mean().item()


def layer_response_std(model: nn.Module, images: torch.Tensor, layers: Sequence[str | int] | None = None
                       ) -> dict[str, float]:
    """``{layer: response std}`` for ``layers`` (default ``default_response_layers``) on one batch, in eval
    mode (BN uses its running statistics, as a trained network is analysed)."""
    names = [layer_name(model, layer) for layer in layers] if layers is not None else default_response_layers(model)
    if not names:
        raise UserError(f"{type(model).__name__} has no convolution whose responses could be measured")
    if len(images) < 2:
        raise UserError("layer response statistics need a batch of at least 2 images")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with capture_outputs(model, names) as outputs, torch.no_grad():
            model(images.to(device))
    finally:
        model.train(was_training)
    missing = [n for n in names if n not in outputs]
    if missing:
        raise UserError(f"layers {missing} did not run in {type(model).__name__}'s forward pass")
    return {name: response_std(outputs[name]) for name in names}


def response_std_picture(results: Mapping[str, Mapping[str, float]], title: str = "layer responses") -> Figure:
    """ResNet Fig. 7: each model's response std per layer in network order (top) and sorted in descending
    order (bottom). ``results``: ``{model label: layer_response_std(...)}``."""
    if not results:
        raise UserError("response_std_picture needs at least one model's results")
    fig, axes = new_figure(2, 1, (7, 5.5))
    top, bottom = axes[:, 0]
    for label, stds in results.items():
        values = np.array(list(stds.values()))
        x = np.arange(1, len(values) + 1)
        top.plot(x, values, marker=".", label=label)
        bottom.plot(x, np.sort(values)[::-1], marker=".", label=label)
    top.set_title(f"{title}: std per layer (original order)", fontsize=9)
    bottom.set_title("sorted by magnitude", fontsize=9)
    for ax in (top, bottom):
        ax.set_xlabel("layer index", fontsize=8)
        ax.set_ylabel("std", fontsize=8)
        ax.legend(fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
