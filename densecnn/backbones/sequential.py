"""The common shape of the plain "conv stack + classifier" networks (AlexNet, ZF-Net, VGG, NiN, All-CNN).

``features`` is one ``nn.Sequential`` (so torchvision's ``features.N`` keys load unchanged); the feature
maps ``forward_features`` returns are the outputs of the layers at ``taps``, and stage i is the run of
layers just after tap i-1 up to and including tap i (the first from ``features.0``). ``forward_head`` runs the
layers after the last tap, then ``pool`` (which ends flat for the FC heads) and ``classifier``.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, FeatureInfo


class SequentialBackbone(Backbone):
    """A backbone whose body is one ``nn.Sequential`` (AlexNet, ZF-Net, VGG, NiN, All-CNN): feature maps are
    tapped at given indices, a pooling layer and a classifier follow.

    Args:
        features: the convolutional body.
        taps: ``(index in features, channels, reduction)`` of each returned map, shallow to deep.
        pool: the layer between the features and the classifier.
        classifier: the classifier head.
        num_classes: classifier width (0: none).
        num_features: width of the pooled features.
        classifier_name: the classifier's module name (dropped when a checkpoint's class count differs).
    """
    def __init__(self, features: nn.Sequential, taps: list[tuple[int, int, int]], pool: nn.Module,
                 classifier: nn.Module, *, num_classes: int, num_features: int, classifier_name: str):
        """``taps``: ``(index in features, channels, reduction)`` for each returned map, shallow to deep."""
        super().__init__()
        self.features = features
        self.pool = pool
        self.classifier = classifier
        self.num_classes, self.num_features, self.classifier_name = num_classes, num_features, classifier_name
        self.tap_indices = [index for index, _, _ in taps]
        self.feature_info = [FeatureInfo(chs, red, f"features.{index}") for index, chs, red in taps]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        out, last = [], self.tap_indices[self.feature_index(max_index)]
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_indices:
                out.append(x)
            if index == last:
                break
        return out

    def stage_modules(self) -> list[list[str]]:
        # the taps are ReLUs (or pools/dropout): a stage is the convolutions *leading* to its tap, not the tap
        starts = [0] + [index + 1 for index in self.tap_indices[:-1]]
        return [[f"features.{j}" for j in range(start, tap + 1)] for start, tap in zip(starts, self.tap_indices)]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features[self.tap_indices[-1] + 1:]:
            x = layer(x)
        return self.classifier(self.pool(x))


def flat_pool(size: int) -> nn.Sequential:
    """Average to ``size`` x ``size`` (an identity at the paper's input size) and flatten for FC6."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(size), nn.Flatten())


def gap() -> nn.Sequential:
    """Global average pooling to a vector (the GAP networks' features when built without classifier)."""
    return flat_pool(1)


def fc_head(in_features: int, hidden: int, num_classes: int, dropout: float, *,
            dropout_first: bool) -> tuple[nn.Sequential, int]:
    """The AlexNet/VGG head: two hidden FC layers with ReLU and dropout, then the classifier (dropped when
    ``num_classes == 0``, leaving the 4096-d FC7 features).

    ``dropout_first`` is torchvision's AlexNet order (dropout *before* FC6 and FC7: keys classifier.1/4/6);
    otherwise dropout follows each hidden ReLU (the paper's FC6/FC7 dropout, and torchvision's VGG: .0/.3/.6).
    """
    if dropout_first:
        layers = [nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                  nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)]
    else:
        layers = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    layers.append(nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity())
    return nn.Sequential(*layers), hidden
