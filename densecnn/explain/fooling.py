"""Fooling images (seeds S3 L3582-3677; SEED_NOTES section 4.6): inputs a classifier gets confidently wrong.

* ``targeted_adversarial``: Szegedy et al. 2013's imperceptible perturbations, found with projected gradient
  descent (Madry et al. 2018; with ``random_start=False`` it is Kurakin et al. 2016's iterative FGSM). A
  correctly classified image is pushed to a chosen class while every pixel moves by at most ``epsilon``
  (L-infinity, in the units of [0, 1] pixels; the model's normalisation is applied inside, so the budget
  means the same for every model). The result reports the budget actually used, ``max |delta|``.
* ``fooling_image``: Nguyen et al. 2015's gradient-ascent fooling images: start from uniform noise and follow
  the gradient of the chosen class's (log) softmax output until the model gives it ``confidence`` (99% by
  default; the seed quotes >= 99.6% for their Fig. 1 and 99.99% in the abstract, S3 L3633), with no prior that
  would make the image look natural, so it stays unrecognisable.

Both take ``model``: anything mapping a normalised N x C x H x W batch to N x classes logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from .maximise import (
    Regularisers,
    ascend,
    check_class,
    classifier_logits,
    evaluating,
    image_shape,
    model_device,
    normaliser,
    start_image,
)
from .pictures import labelled_grid


@dataclass
class Adversarial:
    """One targeted adversarial example. Images are C x H x W pixels in [0, 1]; ``delta = adversarial -
    original``; ``budget = max |delta|`` (never above ``epsilon``); ``confidence`` is the softmax probability of
    ``predicted`` on the adversarial image, ``target_confidence`` that of ``target``; ``steps`` the gradient
    steps taken (it stops once the label is ``target`` with at least ``min_confidence``)."""

    original: torch.Tensor
    adversarial: torch.Tensor
    delta: torch.Tensor
    epsilon: float
    budget: float
    original_label: int
    original_confidence: float
    target: int
    predicted: int
    confidence: float
    target_confidence: float
    steps: int

    @property
    def success(self) -> bool:
        return self.predicted == self.target


@dataclass
class FoolingImage:
    """An image grown from noise for class ``target``: ``confidence`` is the softmax probability the model gives
    ``predicted`` on it, ``reached`` whether ``target`` got at least the asked-for confidence."""

    image: torch.Tensor
    target: int
    predicted: int
    confidence: float
    target_confidence: float
    reached: bool
    steps: int
    trajectory: list[float] = field(default_factory=list)


def pixel_batch(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``images`` as an N x C x H x W float batch of pixels in [0, 1]; normalised images are refused, since the
    budget and the normalisation are both defined on pixels."""
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"images must be a C x H x W or N x C x H x W tensor, got {shape}")
    batch = images[None] if images.ndim == 3 else images
    batch = batch.float()
    if batch.shape[1] != channels:
        raise UserError(f"images have {batch.shape[1]} channels but the normalisation (mean/std) has {channels}")
    low, high = float(batch.min()), float(batch.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise UserError(f"images must be pixels in [0, 1] (the model's normalisation is applied inside); these "
                        f"range over [{low:.3f}, {high:.3f}]: pass them before Normalize")
    return batch.clamp(0.0, 1.0)


def target_list(targets: int | Sequence[int], n: int) -> list[int]:
    """One target class per image: a single class repeated, or the given list.

    Args:
        targets: a class index or one per image.
        n: the number of images.

    Raises:
        UserError: a list of another length.
    """
    chosen = [int(targets)] * n if isinstance(targets, int) else [int(t) for t in targets]
    if len(chosen) != n:
        raise UserError(f"{len(chosen)} targets for {n} images: give one class, or one per image")
    return chosen


def targeted_adversarial(model, images: torch.Tensor, targets: int | Sequence[int], *, epsilon: float = 8 / 255,
                         steps: int = 40, step_size: float | None = None, random_start: bool = False,
                         min_confidence: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD, seed: int = 0) -> list[Adversarial]:
    """Targeted L-infinity PGD: ``delta <- clip_eps(delta - step_size * sign(grad_delta CE(f(x + delta), target)))``
    with ``x + delta`` kept in [0, 1]. ``step_size`` defaults to ``2.5 * epsilon / steps`` (Madry et al.), so the
    whole budget can be crossed; ``random_start`` starts from a uniform point of the epsilon-ball (seeded).
    Each image stops as soon as its label is its target with probability >= ``min_confidence``."""
    if not 0 < epsilon <= 1:
        raise UserError(f"epsilon is an L-infinity budget in [0, 1] pixel units and must be in (0, 1], got {epsilon}")
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if not 0 <= min_confidence < 1:
        raise UserError(f"min_confidence must be in [0, 1), got {min_confidence}")
    step = 2.5 * epsilon / steps if step_size is None else step_size
    if step <= 0:
        raise UserError(f"step_size must be > 0, got {step}")
    device = model_device(model)
    normalise = normaliser(mean, std, device)
    x = pixel_batch(images, len(mean)).to(device)
    target = torch.tensor(target_list(targets, len(x)), device=device)
    generator = torch.Generator().manual_seed(seed)
    delta = torch.zeros_like(x)
    if random_start:
        delta = ((torch.rand(x.shape, generator=generator) * 2 - 1) * epsilon).to(device)
    delta = (x + delta).clamp(0.0, 1.0) - x
    taken = torch.zeros(len(x), dtype=torch.long, device=device)
    with evaluating(model):
        with torch.no_grad():
            before = F.softmax(classifier_logits(model, normalise(x)), dim=1)
        for t in target.tolist():
            check_class(t, before.shape[1])
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = classifier_logits(model, normalise(x + delta))
            probs = F.softmax(logits.detach(), dim=1)
            done = (probs.argmax(1) == target) & (probs.gather(1, target[:, None])[:, 0] >= min_confidence)
            if bool(done.all()):
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), [delta])
            with torch.no_grad():
                active = (~done).float().view(-1, 1, 1, 1)
                delta = (delta - active * step * grad.sign()).clamp(-epsilon, epsilon)
                delta = (x + delta).clamp(0.0, 1.0) - x
            taken += (~done).long()
        adversarial = (x + delta.detach()).clamp(0.0, 1.0)
        with torch.no_grad():
            after = F.softmax(classifier_logits(model, normalise(adversarial)), dim=1)
    results = []
    for i in range(len(x)):
        diff = (adversarial[i] - x[i]).cpu()
        results.append(Adversarial(
            original=x[i].cpu(), adversarial=adversarial[i].cpu(), delta=diff, epsilon=float(epsilon),
            budget=float(diff.abs().max()), original_label=int(before[i].argmax()),
            original_confidence=float(before[i].max()), target=int(target[i]), predicted=int(after[i].argmax()),
            confidence=float(after[i].max()), target_confidence=float(after[i, target[i]]), steps=int(taken[i])))
    return results


def fooling_image(model, target: int, *, image_size: int | Sequence[int] = 224, confidence: float = 0.99,
                  steps: int = 500, lr: float = 0.05, regularisers: Regularisers | None = None,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  seed: int = 0) -> FoolingImage:
    """Gradient ascent on ``log softmax(f(x))[target]`` from uniform noise (Nguyen et al. 2015),
    pixels clipped to [0, 1], no regulariser unless given, until the target's probability reaches
    ``confidence`` or ``steps`` run out (``reached`` says which)."""
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    device = model_device(model)
    normalise = normaliser(mean, std, device)
    generator = torch.Generator().manual_seed(seed)
    start = start_image(image_shape(image_size, len(mean)), generator, device, uniform=True)

    def log_probability(x: torch.Tensor) -> torch.Tensor:
        logits = classifier_logits(model, x)
        check_class(target, logits.shape[1])
        return F.log_softmax(logits, dim=1)[:, target]

    def confident(pixels: torch.Tensor) -> bool:
        with torch.no_grad():
            return bool(log_probability(normalise(pixels)).exp().min() >= confidence)

    with evaluating(model):
        image, trajectory, taken = ascend(log_probability, start, normalise=normalise, steps=steps, lr=lr,
                                          regularisers=regularisers or Regularisers.none(), generator=generator,
                                          stop=confident)
        with torch.no_grad():
            probs = F.softmax(classifier_logits(model, normalise(image)), dim=1)[0]
    return FoolingImage(image=image[0].cpu(), target=target, predicted=int(probs.argmax()),
                        confidence=float(probs.max()), target_confidence=float(probs[target]),
                        reached=bool(probs[target] >= confidence), steps=taken, trajectory=trajectory)


def fooling_images(model, targets: Sequence[int], **options) -> list[FoolingImage]:
    """``fooling_image`` for each class in ``targets`` (same options, same seed)."""
    if not len(targets):
        raise UserError("fooling images: no target class given")
    return [fooling_image(model, int(t), **options) for t in targets]


def _name(index: int, class_names: Sequence[str] | None) -> str:
    return class_names[index] if class_names is not None and 0 <= index < len(class_names) else str(index)


def adversarial_picture(results: Sequence[Adversarial], class_names: Sequence[str] | None = None, *,
                        title: str | None = None):
    """One row per example: original | perturbation (amplified to the full grey range) | adversarial, each
    labelled with the class and the model's confidence, the perturbation with its budget and the factor it was
    amplified by. Returns the matplotlib figure."""
    tiles, labels = [], []
    for r in results:
        amplify = 0.5 / max(r.budget, 1e-12)
        tiles += [r.original, (0.5 + amplify * r.delta).clamp(0.0, 1.0), r.adversarial]
        labels += [f"{_name(r.original_label, class_names)} {r.original_confidence:.2f}",
                   f"max|δ| {r.budget:.4f}, shown ×{amplify:.0f}",
                   f"{_name(r.predicted, class_names)} {r.confidence:.2f}"
                   + ("" if r.success else f" (target {_name(r.target, class_names)})")]
    if title is None and results:
        title = f"Targeted PGD, ε = {results[0].epsilon:.4f}: original | perturbation | adversarial"
    return labelled_grid(tiles, labels, columns=3, title=title, normalise=False)


def fooling_picture(results: Sequence[FoolingImage], class_names: Sequence[str] | None = None, *,
                    columns: int = 6, title: str | None = "Fooling images from noise (Nguyen et al. 2015)"):
    """The fooling images, each labelled with the class the model sees and its confidence."""
    labels = [f"{_name(r.predicted, class_names)} {r.confidence:.4f}" for r in results]
    return labelled_grid([r.image for r in results], labels, columns=columns, title=title, normalise=False)
