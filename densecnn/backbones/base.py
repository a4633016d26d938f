"""The one contract every densecnn backbone follows (timm's feature convention).

* ``forward_features(x)`` returns the multi-scale feature maps, shallow to deep, as a list.
* ``feature_info`` describes each of those maps: ``num_chs`` (channels), ``reduction`` (nominal stride
  relative to the input) and ``module`` (the attribute path of the layer that produces it).
* ``forward(x)`` returns logits when the model has a classifier (``num_classes > 0``), and the pooled
  features (``num_features`` wide) when it was built with ``num_classes=0``.
* ``stage_modules()`` declares which layers form each stage: one list of attribute paths per
  ``feature_info`` entry, in the order ``forward_features`` runs them. Stage i is everything from just after
  map i-1 up to and including the layer that produces map i, so the stem belongs to stage 0 (timm's
  convention: ResNet's first map is the stem's ``act1``); layers after the last map (a classifier, VGG's
  fc6/fc7, GoogLeNet's auxiliary heads) belong to no stage. ``feature_info[i].module`` only names the layer
  *producing* map i -- for the sequential families a parameter-free ReLU -- so membership never comes from it.
  Freezing by stage (``trainable_stages``) and the Faster R-CNN last-stage box head use only this declaration.

Detection, dense-prediction and video heads consume only this contract, so any registered backbone
works with any task.

Export: every registered backbone exports with ``torch.export.export(model.eval(), (x,))`` and to ONNX with
``torch.onnx.export(model.eval(), (x,), dynamo=True)`` (the exporter built on torch.export; onnxruntime
runs the result), both checked against eager outputs in ``tests/backbones/test_export.py``. TorchScript
(``torch.jit.script``) is not supported: the modules use postponed annotations (``from __future__ import
annotations``) and ``X | None`` types, which the TorchScript compiler cannot read, and PyTorch has
deprecated TorchScript in favour of torch.export. ``torch.jit.trace`` is not tested either; the legacy ONNX
exporter (``dynamo=False``, built on it) fails on ``AdaptiveAvgPool2d`` with output sizes that do not divide
the input (AlexNet/VGG/ZF-Net's 6x6/7x7 pools at other input sizes).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone returns, in timm's convention: ``num_chs`` channels, ``reduction`` (the
    stride relative to the input) and the name of the ``module`` that produces it; indexable as a dict.
    """
    num_chs: int
    reduction: int
    module: str

    def __getitem__(self, key: str):  # timm's feature_info entries are dicts: fi["num_chs"]
        return getattr(self, key)


class StagesUnavailable(ValueError):
    """A model whose stages cannot be given in the form asked for (a timm model that taps its maps inside
    blocks, or whose stages are not a chain of modules); freezing by stage or a last-stage head is refused."""


class Backbone(nn.Module, ABC):
    """Base class: subclasses fill ``feature_info`` and implement ``forward_features``/``forward_head``."""

    feature_info: list[FeatureInfo]
    num_classes: int
    num_features: int
    # Attribute path of the classifier (``get_classifier``); weights for it are dropped, with a message,
    # when a checkpoint was trained for another number of classes.
    classifier_name: str = "fc"

    @abstractmethod
    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        """The multi-scale feature maps, shallow to deep, one per ``feature_info`` entry: all of them, or maps
        ``0..max_index`` only (negative counts from the deepest), computing no layer past map ``max_index``."""

    @abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """From the deepest feature map to logits (or pooled features when ``num_classes == 0``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    def feature_maps(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """The maps at ``indices`` of ``feature_info`` (negative indices count from the deepest), in that
        order, computing nothing past the deepest of them. What consumers that read only some maps (the
        detectors) call: Faster R-CNN's C4 layout reads conv4_x, so conv5_x does not run on the whole image."""
        if not len(indices):
            raise UserError(f"{type(self).__name__}.feature_maps: no feature map index given")
        resolved = [self.feature_index(i) for i in indices]
        maps = self.forward_features(x, max(resolved))
        return [maps[i] for i in resolved]

    def feature_index(self, index: int | None) -> int:
        """``index`` of ``feature_info`` as a non-negative position (``None``: the deepest map); one outside
        the backbone's maps is an error naming how many there are, never a silent wrap-around."""
        n = len(self.feature_info)
        if index is None:
            return n - 1
        if not -n <= index < n:
            raise UserError(f"{type(self).__name__} has {n} feature maps (indices 0..{n - 1}, or -{n}..-1 from "
                            f"the deepest); index {index} is not one of them")
        return index % n

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    @abstractmethod
    def stage_modules(self) -> list[list[str]]:
        """Attribute paths of the layers of each stage, shallow to deep (see the module docstring)."""

    def stage_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        """``(name, parameter)`` of each stage, one list per ``feature_info`` entry, names as in
        ``named_parameters``; checked to cover each map once and to share no parameter."""
        stages = []
        for paths in self.stage_modules():
            stages.append([(f"{path}.{name}", p) for path in paths
                           for name, p in self.get_submodule(path).named_parameters()])
        return check_stages(self, stages)

    def stage_module(self, index: int) -> nn.Module:
        """Stage ``index`` as one module that maps feature map ``index - 1`` to map ``index``: its declared
        layers chained (the layer itself when there is one). Exact when ``forward_features`` runs the layers
        one after another; a family with functional steps between them overrides this. Faster R-CNN's
        ``last_stage`` box head runs it on every pooled region."""
        modules = [self.get_submodule(path) for path in self.stage_modules()[index]]
        return modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def feature_channels(self) -> list[int]:
        return [info.num_chs for info in self.feature_info]

    def feature_reductions(self) -> list[int]:
        return [info.reduction for info in self.feature_info]


def check_stages(model: nn.Module, stages: list[list[tuple[str, nn.Parameter]]]
                 ) -> list[list[tuple[str, nn.Parameter]]]:
    """A declaration that misses a map or puts a parameter in two stages is a bug in the family: say so
    rather than freeze the wrong layers silently."""
    if len(stages) != len(model.feature_info):
        raise ValueError(f"{type(model).__name__} declares {len(stages)} stages for {len(model.feature_info)} "
                         f"feature maps")
    seen: dict[int, str] = {}
    for name, p in (item for stage in stages for item in stage):
        if id(p) in seen:
            raise ValueError(f"{type(model).__name__}: parameter {name} is declared in two stages "
                             f"(also as {seen[id(p)]})")
        seen[id(p)] = name
    return stages


def linear_or_identity(in_features: int, num_classes: int) -> nn.Module:
    """The final classifier, or nothing when ``num_classes == 0`` (timm's convention for feature models)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
