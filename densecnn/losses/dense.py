"""The dense-prediction losses of Eigen & Fergus (arXiv 1411.4734, Section 4; S3 L4410-4453 in shared/seeds).

Every loss is taken over *valid* pixels only ("we mask out pixels where the ground truth is missing"), is
computed per image and averaged over the images of the batch that have at least one valid pixel. An image
(or a whole batch) without any valid pixel contributes nothing: the loss is then an exact zero that still
depends on the prediction, so backward() works and no NaN ever appears.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IGNORE_LABEL

IGNORE_INDEX = IGNORE_LABEL  # torch's name for it (``ignore_index``); the value lives in densecnn.constants


def valid_depth_mask(depth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels whose ground-truth depth is usable: finite and > 0 (0 marks missing depth in the PNG format)."""
    valid = torch.isfinite(depth) & (depth > 0)
    return valid if mask is None else valid & mask.bool()


def _squeeze_channel(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] if x.dim() == 4 else x


def _mean_over_images(per_image: torch.Tensor, has_pixels: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    if bool(has_pixels.any()):
        return per_image[has_pixels].mean()
    return anchor.sum() * 0.0  # no valid pixel in the batch: a zero that keeps the graph


def depth_loss(pred_log_depth: torch.Tensor, target_depth: torch.Tensor, mask: torch.Tensor | None = None, *,
               lam: float = 0.5, gradient_weight: float = 1.0) -> torch.Tensor:
    """Eq. (6.1): ``(1/n) sum d^2 - (lam/n^2) (sum d)^2 + (1/n) sum [(grad_x d)^2 + (grad_y d)^2]``.

    Args:
        pred_log_depth: predicted *log* depth, (N, 1, H, W) or (N, H, W).
        target_depth: ground-truth depth in metres (not log), same spatial size; 0, NaN and inf are missing.
        mask: optional extra validity mask (N, H, W).
        lam: the scale-invariance weight; the paper's 1/2 ("elementwise l2 + scale-invariant terms").
        gradient_weight: weight of the gradient-matching term (1 in the paper; 0 gives the 2014 loss).

    ``d = D - D*`` is the log-depth difference and ``n`` the number of valid pixels of the image. The
    horizontal and vertical differences of ``d`` only count where both neighbours are valid (a difference
    across a hole in the ground truth is not a gradient of the scene), and are normalised by the same ``n``
    as in the formula.
    """
    pred = _squeeze_channel(pred_log_depth)
    target = _squeeze_channel(target_depth)
    if pred.shape != target.shape:
        raise ValueError(f"depth_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = valid_depth_mask(target, None if mask is None else _squeeze_channel(mask))
    safe_target = torch.where(valid, target, torch.ones_like(target))
    d = torch.where(valid, pred - torch.log(safe_target), torch.zeros_like(pred))
    n = valid.flatten(1).sum(1).to(pred.dtype)
    n_safe = n.clamp(min=1)
    sum_d = d.flatten(1).sum(1)
    loss = (d ** 2).flatten(1).sum(1) / n_safe - lam * sum_d ** 2 / n_safe ** 2
    if gradient_weight:
        gx = (d[:, :, 1:] - d[:, :, :-1]) * (valid[:, :, 1:] & valid[:, :, :-1])
        gy = (d[:, 1:, :] - d[:, :-1, :]) * (valid[:, 1:, :] & valid[:, :-1, :])
        loss = loss + gradient_weight * ((gx ** 2).flatten(1).sum(1) + (gy ** 2).flatten(1).sum(1)) / n_safe
    return _mean_over_images(loss, n > 0, pred)


def normals_loss(pred_normals: torch.Tensor, target_normals: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (6.2): ``-(1/n) sum_i N_i . N*_i`` over valid pixels.

    ``pred_normals`` (N, 3, H, W) is normalised to unit length per pixel here, inside the graph, so the
    gradient flows through the normalisation as the paper does. Ground-truth pixels are valid where the
    target vector is finite and non-zero (an all-zero normal marks "unknown"), and where ``mask`` allows.
    """
    if pred_normals.shape != target_normals.shape:
        raise ValueError(f"normals_loss: prediction {tuple(pred_normals.shape)} and target "
                         f"{tuple(target_normals.shape)} differ")
    unit = F.normalize(pred_normals, dim=1, eps=1e-6)
    valid = valid_normals_mask(target_normals, mask)
    target = torch.where(valid[:, None], target_normals, torch.zeros_like(target_normals))
    dot = (unit * target).sum(1) * valid
    n = valid.flatten(1).sum(1).to(dot.dtype)
    per_image = -dot.flatten(1).sum(1) / n.clamp(min=1)
    return _mean_over_images(per_image, n > 0, pred_normals)


def valid_normals_mask(normals: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels with a usable normal: finite components and a length well above zero."""
    valid = torch.isfinite(normals).all(1) & (torch.nan_to_num(normals).norm(dim=1) > 0.5)
    return valid if mask is None else valid & mask.bool()


def semantic_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *,
                  ignore_index: int = IGNORE_INDEX, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (6.3): pixelwise softmax cross-entropy ``-(1/n) sum_i C*_i log C_i`` over labelled pixels
    (``ignore_index`` and pixels outside ``mask`` do not count); zero, not NaN, when none is labelled."""
    labels = labels.long()
    if mask is not None:
        labels = torch.where(mask.bool(), labels, torch.full_like(labels, ignore_index))
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, weight=weight)


def median_frequency_weights(label_maps: Iterable[np.ndarray | torch.Tensor], num_classes: int, *,
                             ignore_index: int = IGNORE_LABEL) -> torch.Tensor:
    """Median-frequency class balancing (Eigen & Fergus, ICCV 2015; SegNet, Badrinarayanan et al. 2017, who
    take it from them; not in the seed text): ``w_c = median_freq / freq_c`` with ``freq_c`` the pixels of
    class c divided by the labelled pixels of the images in which c is present, and ``median_freq`` the
    median of those frequencies.

    ``label_maps``: the training set's (H, W) label maps as stored (not augmented). Ignored pixels belong to no
    class and count in no denominator. A class that never occurs gets weight 1 (the median class's): it never
    is a target in training, so its weight only matters if it appears at evaluation. Returns float32 (C,).
    Raises ValueError naming the map's position when a label is neither below ``num_classes`` nor ignored.
    """
    class_pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for i, labels in enumerate(label_maps):
        labels = torch.as_tensor(np.asarray(labels)).long().flatten()
        labels = labels[labels != ignore_index]
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"label map {i}: labels outside 0..{num_classes - 1} ({ignore_index} = ignore): "
                             f"{labels[(labels < 0) | (labels >= num_classes)].unique()[:10].tolist()}")
        counts = torch.bincount(labels, minlength=num_classes).double()
        class_pixels += counts
        image_pixels += (counts > 0) * float(len(labels))
    present = image_pixels > 0
    if not bool(present.any()):
        raise ValueError("median-frequency weights: the label maps hold no labelled pixel")
    freq = class_pixels[present] / image_pixels[present]
    weights = torch.ones(num_classes, dtype=torch.float64)
    # the median proper (the mean of the two middle values for an even count), as numpy.median
    weights[present] = freq.quantile(0.5) / freq
    return weights.float()


class DepthLoss(nn.Module):
    """``depth_loss`` as a module (``lam`` = 0.5, gradient term on, as in Eq. 6.1)."""

    def __init__(self, lam: float = 0.5, gradient_weight: float = 1.0):
        super().__init__()
        self.lam, self.gradient_weight = lam, gradient_weight

    def forward(self, pred_log_depth, target_depth, mask=None):
        return depth_loss(pred_log_depth, target_depth, mask, lam=self.lam, gradient_weight=self.gradient_weight)


class NormalsLoss(nn.Module):
    """``normals_loss`` as a module."""

    def forward(self, pred_normals, target_normals, mask=None):
        return normals_loss(pred_normals, target_normals, mask)


class SemanticLoss(nn.Module):
    """``semantic_loss`` as a module (ignore label 255)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits, labels, mask=None):
        return semantic_loss(logits, labels, mask, ignore_index=self.ignore_index, weight=self.weight)
