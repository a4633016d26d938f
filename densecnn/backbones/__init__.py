"""The backbone zoo: one module per family, a registry, and ``create_backbone``."""
from __future__ import annotations

import os

from torch import nn

from . import alexnet, allcnn, c3d, googlenet, inflate, jarrett, lenet, nin, resnet, vgg, video_tv, zfnet  # noqa: F401  (registers the families)
from .base import Backbone, FeatureInfo
from .registry import TIMM_PREFIX, get_entry, list_backbones, register_backbone


def create_backbone(name: str, *, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                    strict: bool = True, **kwargs) -> nn.Module:
    """Build a registered backbone (``list_backbones()``) or ``timm:<name>``.

    Args:
        name: registry name, e.g. ``"resnet50"``, ``"cifar_resnet110"``, ``"timm:convnext_tiny"``.
        weights: a weights file, URL or ``torchvision:<Enum>.<NAME>`` (see ``densecnn.weights``); for timm
            models also ``"timm"``, timm's own pretrained weights.
        num_classes: classifier width; ``None`` keeps the paper's (1000 for ImageNet models), ``0`` builds
            no classifier and ``forward`` returns pooled features.
        strict: missing/unexpected keys in ``weights`` are an error (True) or a warning (False).
        **kwargs: architecture options, e.g. ``shortcut="A"`` for ResNets, ``in_chans=1``.
    """
    entry = get_entry(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name.startswith(TIMM_PREFIX):
        if weights == "timm":
            kwargs["pretrained"], weights = True, None
        model = entry.builder(name, **kwargs)
    else:
        try:
            model = entry.builder(**kwargs)
        except TypeError as err:
            raise TypeError(f"backbone {name!r}: {err}") from err
    if weights is not None:
        from ..weights import load_weights

        load_weights(model, weights, strict=strict)
    return model


__all__ = ["Backbone", "FeatureInfo", "create_backbone", "list_backbones", "register_backbone", "get_entry"]
