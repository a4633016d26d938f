"""Activation maximisation: optimise an input image so that a class score or a channel's mean activation is as
large as possible (Erhan et al. 2009; Simonyan et al. 2013, section 2; "maximize banana" in the seeds, see
SEED_NOTES section 4.6). The result depends on the start and on the regularisers, so both are explicit and the
run is seeded.

The image is optimised in pixel units: a ``C x H x W`` tensor in [0, 1] (what a picture shows). The model's
input normalisation ``(x - mean) / std`` is applied inside, so "clipping to the normalised range" is clipping
the pixels to [0, 1]. The regularisers are the usual ones:

* jitter: the image is rolled by a random offset of up to ``jitter`` pixels before every forward pass
  (Mordvintsev et al.'s DeepDream), so no single pixel position can carry the objective;
* L2 decay: after every step the image moves a fraction ``l2_decay`` towards mid-grey (Yosinski et al. 2015,
  section 3, "L2 decay");
* Gaussian blur of width ``blur_sigma`` every ``blur_every`` steps (Yosinski et al. 2015, "Gaussian blur"),
  through torchvision's ``gaussian_blur``;
* total variation: ``tv_weight`` times the mean absolute difference of neighbouring pixels is subtracted from
  the objective (Mahendran & Vedaldi 2015, the TV^beta prior with beta = 1);
* colour decorrelation (optional): the image is ``sigmoid(M z)``, with ``M`` the square root of ImageNet's colour
  correlation (Olah et al. 2017, "Feature Visualization", the Lucid values), so steps move along decorrelated
  colour directions; the sigmoid keeps pixels inside (0, 1) without clipping.

``ascend`` is the loop; ``fooling.fooling_image`` reuses it with no regulariser and a noise start
(Nguyen et al. 2015's gradient-ascent fooling images).
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ..backbones.base import Backbone
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from .pictures import labelled_grid

#: Square root of ImageNet's RGB colour correlation matrix (Lucid, ``color_correlation_svd_sqrt``), used to
#: decorrelate colour in the optimised parameter; its columns are scaled to unit maximum norm as Lucid does.
COLOUR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                        [0.27, 0.00, -0.05],
                                        [0.27, -0.09, 0.03]])

Objective = Callable[[torch.Tensor], torch.Tensor]  # normalised input batch -> one score per image


@dataclass(frozen=True)
class Regularisers:
    """What keeps a maximised image natural-looking (see the module docstring). ``Regularisers.none()`` is plain
    gradient ascent with clipping, as for fooling images."""

    jitter: int = 4
    l2_decay: float = 1e-3
    blur_every: int = 4
    blur_sigma: float = 0.5
    tv_weight: float = 0.0
    decorrelate: bool = False

    @classmethod
    def none(cls) -> Regularisers:
        return cls(jitter=0, l2_decay=0.0, blur_every=0, blur_sigma=0.0, tv_weight=0.0, decorrelate=False)

    def check(self) -> None:
        for name in ("jitter", "l2_decay", "blur_every", "blur_sigma", "tv_weight"):
            if getattr(self, name) < 0:
                raise UserError(f"activation maximisation: {name} must be >= 0, got {getattr(self, name)}")
        if self.l2_decay >= 1:
            raise UserError(f"activation maximisation: l2_decay is a fraction per step and must be < 1, "
                            f"got {self.l2_decay}")
        if self.blur_every and not self.blur_sigma:
            raise UserError("activation maximisation: blur_every is set but blur_sigma is 0")


@dataclass
class Maximisation:
    """One optimised image: ``image`` (C x H x W, pixel units in [0, 1]), the ``objective`` on it (no jitter),
    the ``trajectory`` of the objective at every step (on the jittered input the step saw) and, for a class
    target, the softmax ``probability`` of that class on the final image."""

    target: str
    image: torch.Tensor
    objective: float
    trajectory: list[float] = field(default_factory=list)
    probability: float | None = None
    steps: int = 0
    class_index: int | None = None


def normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [0, 1] -> the model's input, ``(x - mean) / std`` per channel (what the data pipeline does)."""
    if len(mean) != len(std):
        raise UserError(f"normalisation: mean has {len(mean)} channels but std has {len(std)}")
    if any(s <= 0 for s in std):
        raise UserError(f"normalisation: every std must be > 0, got {list(std)}")
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean_t) / std_t


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a parameter-free model or a plain callable).

    Args:
        model: a module or callable.
    """
    parameter = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (BatchNorm's running statistics, no dropout) for the optimisation, restored after."""
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield model
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours, per image (TV with beta = 1)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1))


class _Pixels:
    """The optimised parameter and how it maps to pixels: the pixels themselves (clipped to [0, 1] after every
    step), or ``sigmoid(M z)`` with colour decorrelation."""

    def __init__(self, start: torch.Tensor, decorrelate: bool):
        self.decorrelate = decorrelate
        if decorrelate:
            if start.shape[1] != 3:
                raise UserError(f"colour decorrelation needs 3-channel images, got {start.shape[1]} channels")
            matrix = COLOUR_CORRELATION_SQRT / COLOUR_CORRELATION_SQRT.norm(dim=0).max()
            self.matrix = matrix.to(start.device)
            # invert the map at the start image, so both parameterisations begin at the same pixels
            logits = torch.logit(start.clamp(1e-3, 1 - 1e-3))
            z = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.matrix), logits)
            self.param = z.detach().clone().requires_grad_(True)
        else:
            self.param = start.detach().clone().requires_grad_(True)

    def pixels(self) -> torch.Tensor:
        if not self.decorrelate:
            return self.param
        return torch.sigmoid(torch.einsum("ij,njhw->nihw", self.matrix, self.param))

    @torch.no_grad()
    def regularise(self, step: int, reg: Regularisers) -> None:
        """The image-space operators between gradient steps: decay towards grey, blur, clipping."""
        # Decay and blur act on the parameter: for decorrelated colour, z = 0 is mid-grey and a blur of z blurs
        # the image (the colour map is per pixel), so both keep their meaning.
        centre = 0.0 if self.decorrelate else 0.5
        if reg.l2_decay:
            self.param.sub_(centre).mul_(1.0 - reg.l2_decay).add_(centre)
        if reg.blur_every and (step + 1) % reg.blur_every == 0:
            kernel = 2 * int(np.ceil(3 * reg.blur_sigma)) + 1
            self.param.copy_(gaussian_blur(self.param, [kernel, kernel], [reg.blur_sigma, reg.blur_sigma]))
        if not self.decorrelate:
            self.param.clamp_(0.0, 1.0)


def ascend(objective: Objective, start: torch.Tensor, *, normalise: Callable[[torch.Tensor], torch.Tensor],
           steps: int, lr: float, regularisers: Regularisers, generator: torch.Generator,
           stop: Callable[[torch.Tensor], bool] | None = None) -> tuple[torch.Tensor, list[float], int]:
    """Gradient ascent of ``objective(normalise(pixels))`` from ``start`` (N x C x H x W pixels in [0, 1]) with
    Adam, the regularisers applied around every step. ``stop(pixels)`` ends it early. Returns the final pixels,
    the objective (mean over the batch) at every step, and the number of steps taken."""
    if steps < 1:
        raise UserError(f"activation maximisation: steps must be >= 1, got {steps}")
    if lr <= 0:
        raise UserError(f"activation maximisation: lr must be > 0, got {lr}")
    regularisers.check()
    pixels = _Pixels(start, regularisers.decorrelate)
    optimiser = torch.optim.Adam([pixels.param], lr=lr)
    trajectory: list[float] = []
    taken = 0
    for step in range(steps):
        if stop is not None and stop(pixels.pixels().detach()):
            break
        x = pixels.pixels()
        if regularisers.jitter:
            dy, dx = torch.randint(-regularisers.jitter, regularisers.jitter + 1, (2,), generator=generator).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        score = objective(normalise(x))
        loss = -score.sum()
        if regularisers.tv_weight:
            loss = loss + regularisers.tv_weight * total_variation(pixels.pixels()).sum()
        # only the input's gradient: the model's parameters keep no .grad from this
        (pixels.param.grad,) = torch.autograd.grad(loss, [pixels.param])
        optimiser.step()
        pixels.regularise(step, regularisers)
        trajectory.append(float(score.detach().mean()))
        taken = step + 1
    return pixels.pixels().detach(), trajectory, taken


# ---------------------------------------------------------------------------------------------- objectives


def class_objective(model: Callable[[torch.Tensor], torch.Tensor], index: int) -> Objective:
    """The unnormalised score (logit) of class ``index``: Simonyan et al. maximise it rather than the softmax,
    which could also rise by lowering the other classes."""
    def score(x: torch.Tensor) -> torch.Tensor:
        logits = classifier_logits(model, x)
        check_class(index, logits.shape[1])
        return logits[:, index]
    return score


def classifier_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The model's logits on ``x``, checked to be N x classes (activation maximisation and fooling images need a
    classifier, Simonyan et al. 2013 Section 2).

    Args:
        model: the classifier.
        x: the input batch.

    Raises:
        UserError: the model returned something else.
    """
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"activation maximisation and fooling images need a classification model returning "
                        f"N x classes logits; this model returned {shape}")
    return logits


def check_class(index: int, num_classes: int) -> None:
    """Check that ``index`` is one of the model's classes.

    Args:
        index: the class index.
        num_classes: the model's class count.

    Raises:
        UserError: out of range.
    """
    if not 0 <= index < num_classes:
        raise UserError(f"class {index} is not one of the model's {num_classes} classes (0..{num_classes - 1})")


def find_backbone(model) -> Backbone | None:
    """The densecnn backbone of ``model``: itself, or a task's ``backbone`` attribute."""
    if isinstance(model, Backbone):
        return model
    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, Backbone) else None


def channel_objective(model, layer: int | str, channel: int) -> Objective:
    """The mean activation of ``channel`` in ``layer``: an index into the backbone's ``feature_info`` (the feature
    contract; nothing past that map is computed) or a module name as in ``named_modules`` (read with a forward
    hook while the whole model runs)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, str)):
        raise UserError(f"layer must be a feature-map index (int) or a module name (str), got {layer!r}")
    if isinstance(layer, int):
        backbone = find_backbone(model)
        if backbone is None:
            raise UserError(f"layer {layer} is a feature-map index, which needs a densecnn backbone (or a task "
                            f"with one); name the module instead (one of named_modules())")
        index = backbone.feature_index(layer)
        return lambda x: _channel_mean(backbone.feature_maps(x, [index])[0], channel, f"feature map {index}")
    module = _named_module(model, layer)

    def score(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            seen.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = module.register_forward_hook(keep)
        try:
            model(x)
        finally:
            handle.remove()
        if not seen:
            raise UserError(f"layer {layer!r} did not run in the model's forward pass")
        return _channel_mean(seen[-1], channel, f"layer {layer!r}")
    return score


def _named_module(model, name: str) -> nn.Module:
    modules = dict(model.named_modules()) if isinstance(model, nn.Module) else {}
    if name not in modules or not name:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise UserError(f"the model has no module named {name!r}.{hint}")
    return modules[name]


def _channel_mean(activation: torch.Tensor, channel: int, where: str) -> torch.Tensor:
    if activation.ndim < 2:
        raise UserError(f"{where} gives a tensor of shape {tuple(activation.shape)}, which has no channels")
    channels = activation.shape[1]
    if not 0 <= channel < channels:
        raise UserError(f"channel {channel} is not one of the {channels} channels of {where} (0..{channels - 1})")
    return activation[:, channel].flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------- public API


def start_image(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, *,
                spread: float = 0.1, uniform: bool = False) -> torch.Tensor:
    """A seeded start: mid-grey plus small Gaussian noise (``spread``), or uniform noise over [0, 1]."""
    noise = torch.rand(shape, generator=generator) if uniform else (0.5 + spread * torch.randn(shape, generator=generator))
    return noise.clamp(0.0, 1.0).to(device)


def image_shape(image_size: int | Sequence[int], channels: int) -> tuple[int, int, int, int]:
    """The (1, C, H, W) shape of an image to optimise.

    Args:
        image_size: a side, or (height, width).
        channels: input channels.

    Raises:
        UserError: not a positive size.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise UserError(f"image_size must be an int or (height, width) of positive ints, got {image_size!r}")
    return (1, channels, int(size[0]), int(size[1]))


def maximise_class(model, index: int, *, image_size: int | Sequence[int] = 224, steps: int = 200,
                   lr: float = 0.05, regularisers: Regularisers | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                   label: str | None = None) -> Maximisation:
    """The image (pixels in [0, 1]) that maximises class ``index``'s logit. ``model`` maps a normalised
    N x C x H x W batch to N x classes logits (a backbone with a classifier, a classification task)."""
    return _maximise(model, class_objective(model, index), label or f"class {index}", image_size=image_size,
                     steps=steps, lr=lr, regularisers=regularisers, mean=mean, std=std, seed=seed,
                     class_index=index)


def maximise_channel(model, layer: int | str, channel: int, *, image_size: int | Sequence[int] = 224,
                     steps: int = 200, lr: float = 0.05, regularisers: Regularisers | None = None,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                     label: str | None = None) -> Maximisation:
    """The image that maximises the mean activation of ``channel`` in ``layer`` (a feature-map index of the
    backbone, or a module name)."""
    where = f"map {layer}" if isinstance(layer, int) else str(layer)
    return _maximise(model, channel_objective(model, layer, channel), label or f"{where} ch {channel}",
                     image_size=image_size, steps=steps, lr=lr, regularisers=regularisers, mean=mean, std=std,
                     seed=seed)


def maximise(model, targets: Sequence[int | tuple[int | str, int]], **options) -> list[Maximisation]:
    """One maximised image per target: an int is a class, ``(layer, channel)`` a channel (see ``maximise_class``
    and ``maximise_channel`` for ``options``). Each target starts from the same seeded image."""
    if not len(targets):
        raise UserError("activation maximisation: no target given (a class index or a (layer, channel) pair)")
    results = []
    for target in targets:
        if isinstance(target, (tuple, list)) and len(target) == 2:
            results.append(maximise_channel(model, target[0], int(target[1]), **options))
        elif isinstance(target, int) and not isinstance(target, bool):
            results.append(maximise_class(model, target, **options))
        else:
            raise UserError(f"activation maximisation target {target!r} is neither a class index nor a "
                            f"(layer, channel) pair")
    return results


def _maximise(model, objective: Objective, label: str, *, image_size, steps: int, lr: float,
              regularisers: Regularisers | None, mean, std, seed: int, class_index: int | None = None
              ) -> Maximisation:
    device = model_device(model)
    normalise = normaliser(mean, std, device)
    generator = torch.Generator().manual_seed(seed)
    start = start_image(image_shape(image_size, len(mean)), generator, device)
    with evaluating(model):
        image, trajectory, taken = ascend(objective, start, normalise=normalise, steps=steps, lr=lr,
                                          regularisers=regularisers or Regularisers(), generator=generator)
        with torch.no_grad():
            final = float(objective(normalise(image))[0])
            probability = None
            if class_index is not None:
                probability = float(F.softmax(classifier_logits(model, normalise(image)), dim=1)[0, class_index])
    return Maximisation(target=label, image=image[0].cpu(), objective=final, trajectory=trajectory,
                        probability=probability, steps=taken, class_index=class_index)


def maximisation_picture(results: Sequence[Maximisation], class_names: Sequence[str] | None = None, *,
                         columns: int = 6, title: str | None = "Activation maximisation"):
    """A labelled grid, one tile per target: the target, the objective reached and, for a class, its name and
    probability. Returns the matplotlib figure (``pictures.save_figure`` writes it)."""
    labels = []
    for r in results:
        text = r.target
        if r.class_index is not None:
            if class_names is not None and r.class_index < len(class_names):
                text = f"{class_names[r.class_index]} ({r.class_index})"
            text += f" p={r.probability:.3f}"
        else:
            text += f" act={r.objective:.3g}"
        labels.append(text)
    return labelled_grid([r.image for r in results], labels, columns=columns, title=title, normalise=False)

