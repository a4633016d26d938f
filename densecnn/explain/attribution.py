"""Attribution of one scalar score to the input pixels (and frames), through captum.

Every method here is captum's; this module only wraps them for a *score function* ``score(x) -> (N,)``, the
number being explained for each input (a class logit, a detected box's class logit, the mean depth of a pixel
window), so that one code path serves classification, detection, dense prediction and video:

* ``saliency``: |d score / d x| (Simonyan et al. 2014, the class saliency map: the maximum over colour
  channels of the absolute gradient), captum ``Saliency``.
* ``guided_backprop`` (Springenberg et al. 2015) and ``deconvnet`` (Zeiler & Fergus 2014, the backward pass
  through rectifications of the *gradient*): captum ``GuidedBackprop`` / ``Deconvolution``, which override the
  backward pass of every ``nn.ReLU`` module of the model (functional ``F.relu`` calls are not seen: a network
  without ReLU modules, LeNet's tanh, gives the plain gradient).
* ``occlusion`` (Zeiler & Fergus 2014, Sec. 4.2): the score drop when a window of the input is replaced by a
  baseline, slid with a user-chosen window and stride, captum ``Occlusion``.
* ``integrated_gradients`` (Sundararajan et al. 2017), captum ``IntegratedGradients`` from a baseline input.
* ``gradcam`` (Selvaraju et al. 2017): captum ``LayerGradCam`` at a chosen layer (ReLU of the channel-weighted
  map), upsampled to the input with ``LayerAttribution.interpolate``.
* ``layer_attribution``: captum's layer methods (conductance, gradient x activation, Grad-CAM) at a layer's
  own resolution, one map per channel: which channels of a layer carry the score.

``heat_map`` reduces an attribution to one map per input (per frame for video) and ``attribution_figure`` /
``frame_strip_figure`` draw it over the input with a colour bar (``densecnn.explain.pictures``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from captum.attr import (Deconvolution, GuidedBackprop, IntegratedGradients, LayerAttribution, LayerConductance,
                         LayerGradCam, LayerGradientXActivation, Occlusion, Saliency)
from matplotlib.figure import Figure
from torch import nn

from ..errors import ConfigError
from .pictures import heatmap_overlay

#: the input-attribution methods of this module (``attribute``)
METHODS = ("saliency", "guided_backprop", "deconvnet", "gradcam", "occlusion", "integrated_gradients")
#: captum's layer methods ``layer_attribution`` offers
LAYER_METHODS = ("gradcam", "conductance", "gradient_x_activation")
#: what each method's heat map means (the colour bar's label)
HEAT_LABELS = {"saliency": "max over channels |d score / d x|",
               "guided_backprop": "max over channels |guided backprop|",
               "deconvnet": "max over channels |deconvnet|",
               "gradcam": "Grad-CAM (ReLU of weighted activations)",
               "occlusion": "score drop when occluded",
               "integrated_gradients": "sum over channels |integrated gradients|"}

#: occluded copies of an input scored in one forward pass
OCCLUSIONS_PER_PASS = 16

Score = Callable[[torch.Tensor], torch.Tensor]


class ScoreModule(nn.Module):
    """``forward(x) -> (N,)``: ``score`` as an ``nn.Module`` holding ``network``, so captum's module-hook methods
    (guided backprop, deconvnet) find the network's ReLU modules."""

    def __init__(self, network: nn.Module, score: Score):
        super().__init__()
        self.network = network
        self.score = score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)


@contextlib.contextmanager
def relus_not_inplace(module: nn.Module) -> Iterator[None]:
    """ReLU modules computed out of place while inside: captum's backward hooks cannot wrap an in-place ReLU
    (its input, the output of a hooked layer, would be modified in place)."""
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for relu in relus:
        relu.inplace = False
    try:
        yield
    finally:
        for relu in relus:
            relu.inplace = True


def _checked_score(score: Score) -> Score:
    def checked(x: torch.Tensor) -> torch.Tensor:
        out = score(x)
        if out.shape != (len(x),):
            raise ValueError(f"a score function must return one number per input, shape ({len(x)},); "
                             f"got {tuple(out.shape)}")
        return out
    return checked


def default_window(spatial: Sequence[int]) -> tuple[int, ...]:
    """An occlusion window an eighth of each spatial side (at least 1 pixel, a quarter of a clip's frames)."""
    *time, height, width = spatial
    return (*(max(1, t // 4) for t in time), max(1, height // 8), max(1, width // 8))


def _occlusion_shapes(inputs: torch.Tensor, window: Sequence[int] | None, stride: Sequence[int] | int | None
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    spatial = tuple(inputs.shape[2:])
    window = tuple(int(w) for w in (window or default_window(spatial)))
    if len(window) != len(spatial):
        raise ConfigError(f"occlusion window {list(window)}: give one size per spatial dimension of the input "
                          f"{list(spatial)} ({'T, ' if len(spatial) == 3 else ''}H, W)")
    if stride is None:
        stride = tuple(max(1, w // 2) for w in window)
    stride = (int(stride),) * len(window) if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(stride) != len(window) or min(stride) < 1 or min(window) < 1:
        raise ConfigError(f"occlusion window {list(window)} and stride {list(stride)}: positive, one per spatial "
                          f"dimension of {list(spatial)}")
    if any(w > s for w, s in zip(window, spatial)):
        raise ConfigError(f"occlusion window {list(window)} is larger than the input {list(spatial)}")
    channels = inputs.shape[1]
    return (channels, *window), (channels, *stride)


def attribute(score: Score, inputs: torch.Tensor, method: str, *, network: nn.Module | None = None,
              layer: nn.Module | None = None, window: Sequence[int] | None = None,
              stride: Sequence[int] | int | None = None, baseline: float | torch.Tensor = 0.0, steps: int = 32,
              show_progress: bool = False) -> torch.Tensor:
    """Attribution of ``score`` (``x -> (N,)``) to ``inputs`` (N, C, H, W) or (N, C, T, H, W) by ``method``
    (``METHODS``). Returns a tensor of the inputs' shape, except ``gradcam``: (N, 1, *spatial), the layer's map
    upsampled to the input.

    ``network``: the module whose ReLUs guided backprop and deconvnet modify (needed by those two);
    ``layer``: Grad-CAM's layer (a module run by ``score``); ``window``/``stride``: the occlusion window and its
    step per spatial dimension (default ``default_window``, half-window stride), the window filled with
    ``baseline``; ``steps``: integrated gradients' path steps from ``baseline``."""
    score = _checked_score(score)
    inputs = inputs.detach().float().requires_grad_(method not in ("occlusion",))
    if method == "saliency":
        return Saliency(score).attribute(inputs, abs=False).detach()
    if method in ("guided_backprop", "deconvnet"):
        if network is None:
            raise ValueError(f"{method} needs the network whose ReLU modules it modifies (network=...)")
        model = ScoreModule(network, score)
        explainer = GuidedBackprop(model) if method == "guided_backprop" else Deconvolution(model)
        with relus_not_inplace(network):
            return explainer.attribute(inputs).detach()
    if method == "occlusion":
        shapes, strides = _occlusion_shapes(inputs, window, stride)
        with torch.no_grad():
            # several occluded copies per forward pass (captum's perturbations_per_eval): far fewer small passes
            return Occlusion(score).attribute(inputs, sliding_window_shapes=shapes, strides=strides,
                                              baselines=baseline, perturbations_per_eval=OCCLUSIONS_PER_PASS,
                                              show_progress=show_progress).detach()
    if method == "integrated_gradients":
        return IntegratedGradients(score).attribute(inputs, baselines=baseline, n_steps=steps,
                                                    internal_batch_size=max(1, len(inputs)) * 8).detach()
    if method == "gradcam":
        if layer is None:
            raise ValueError("gradcam needs a layer (layer=...)")
        cam = layer_attribution(score, inputs, layer, "gradcam")
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.dim() - 2]
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode=mode).detach()
    raise ConfigError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")


def layer_attribution(score: Score, inputs: torch.Tensor, layer: nn.Module, method: str = "gradcam", *,
                      steps: int = 16) -> torch.Tensor:
    """captum's layer attribution of ``score`` at ``layer``'s output, at the layer's resolution:
    ``gradcam`` (N, 1, *spatial) (ReLU'd, Selvaraju et al. Eq. 2), ``conductance`` and ``gradient_x_activation``
    (N, channels, *spatial), one map per channel."""
    score = _checked_score(score)
    inputs = inputs.detach().float().requires_grad_(True)
    if method == "gradcam":
        return LayerGradCam(score, layer).attribute(inputs, relu_attributions=True).detach()
    if method == "conductance":
        return LayerConductance(score, layer).attribute(inputs, n_steps=steps).detach()
    if method == "gradient_x_activation":
        return LayerGradientXActivation(score, layer).attribute(inputs).detach()
    raise ConfigError(f"layer attribution method {method!r}: expected one of {', '.join(LAYER_METHODS)}")


def heat_map(attributions: torch.Tensor, method: str) -> torch.Tensor:
    """One non-negative (occlusion: signed) map per input, (N, *spatial), from (N, C, *spatial) attributions:
    the maximum over channels of the absolute value for the gradient methods (Simonyan et al. Sec. 3.1), the sum
    of absolute values for integrated gradients, the mean over channels for occlusion (the window covers every
    channel, so all channels hold the same drop) and the single channel of Grad-CAM."""
    if method in ("saliency", "guided_backprop", "deconvnet"):
        return attributions.abs().amax(dim=1)
    if method == "integrated_gradients":
        return attributions.abs().sum(dim=1)
    if method in ("occlusion", "gradcam"):
        return attributions.mean(dim=1)
    raise ConfigError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")


def _draw_box(ax, box: Sequence[float] | None, colour: str = "lime") -> None:
    if box is None:
        return
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))


def attribution_figure(image: np.ndarray, heats: Sequence[np.ndarray | torch.Tensor], titles: Sequence[str], *,
                       title: str, label: str, box: Sequence[float] | None = None) -> Figure:
    """The input (with ``box``, xyxy pixels, outlined: a detection or a dense output window) beside one overlay
    per heat map (a Grad-CAM per layer, or one method's map), each with its colour bar labelled ``label``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(heats), figsize=(3.2 + 4.0 * len(heats), 3.4), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_title("input", fontsize=9)
    _draw_box(axes[0], box)
    for ax, heat, panel_title in zip(axes[1:], heats, titles):
        heatmap_overlay(image, heat, True, ax=ax, title=panel_title, label=label)
        _draw_box(ax, box, "white")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def frame_strip_figure(frames: Sequence[np.ndarray], heat: np.ndarray | torch.Tensor, *, title: str, label: str,
                       frame_numbers: Sequence[int] | None = None) -> Figure:
    """A clip's frames in a row, each with its slice of the space-time ``heat`` (T, H, W) drawn over it on one
    colour scale (shared ``vmin``/``vmax``, so the strip shows *when* the score looks as well as where), and one
    colour bar for the strip."""
    import matplotlib.pyplot as plt

    heat = np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32)
    if len(frames) != len(heat):
        raise ValueError(f"{len(frames)} frames for a heat map of {len(heat)} time steps")
    low, high = float(heat.min()), float(heat.max())
    fig, axes = plt.subplots(1, len(frames), figsize=(1.9 * len(frames) + 0.8, 2.4), squeeze=False)
    numbers = list(frame_numbers) if frame_numbers is not None else list(range(len(frames)))
    for i, (ax, frame) in enumerate(zip(axes[0], frames)):
        heatmap_overlay(frame, heat[i], i == len(frames) - 1, ax=ax, vmin=low, vmax=high, label=label,
                        title=f"t={numbers[i]}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
