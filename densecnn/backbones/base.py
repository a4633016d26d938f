"""The one contract every densecnn backbone follows (timm's feature convention).

* ``forward_features(x)`` returns the multi-scale feature maps, shallow to deep, as a list.
* ``feature_info`` describes each of those maps: ``num_chs`` (channels), ``reduction`` (nominal stride
  relative to the input) and ``module`` (the attribute path of the layer that produces it).
* ``forward(x)`` returns logits when the model has a classifier (``num_classes > 0``), and the pooled
  features (``num_features`` wide) when it was built with ``num_classes=0``.

Detection, dense-prediction and video heads consume only this contract, so any registered backbone
works with any task.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    num_chs: int
    reduction: int
    module: str

    def __getitem__(self, key: str):  # timm's feature_info entries are dicts: fi["num_chs"]
        return getattr(self, key)


class Backbone(nn.Module, ABC):
    """Base class: subclasses fill ``feature_info`` and implement ``forward_features``/``forward_head``."""

    feature_info: list[FeatureInfo]
    num_classes: int
    num_features: int
    # Attribute path of the classifier (``get_classifier``); weights for it are dropped, with a message,
    # when a checkpoint was trained for another number of classes.
    classifier_name: str = "fc"

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The multi-scale feature maps, shallow to deep, one per ``feature_info`` entry."""

    @abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """From the deepest feature map to logits (or pooled features when ``num_classes == 0``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def feature_channels(self) -> list[int]:
        return [info.num_chs for info in self.feature_info]

    def feature_reductions(self) -> list[int]:
        return [info.reduction for info in self.feature_info]


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """The final classifier, or nothing when ``num_classes == 0`` (timm's convention for feature models)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
