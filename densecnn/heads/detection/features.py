"""Our backbones as detection feature extractors: selected ``forward_features`` maps, optionally through a
feature pyramid (torchvision's ``FeaturePyramidNetwork``), plus the ResNet paper's fine-tuning options
(frozen batch norm, trainable stages; S1 L646-762)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from densecnn.backbones.base import StagesUnavailable


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by ``FrozenBatchNorm2d`` holding the same statistics and affine
    parameters: with one or two images per GPU batch statistics are useless, so the detection fine-tuning
    of the ResNet paper keeps BN fixed (S1 L650). Returns the module (changed in place)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            if child.running_mean is not None:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def set_trainable_stages(backbone: nn.Module, trainable_stages: int | None) -> None:
    """Train only the last ``trainable_stages`` of the backbone's declared stages (``stage_parameters``, one
    per ``feature_info`` map; ``None``: leave everything as it is).

    The earlier stages, the stem included (it is part of stage 0), are frozen, as Faster R-CNN does for conv1
    and res2 of its ResNets (torchvision's ``trainable_backbone_layers`` for ResNets: 3 = res3, res4, res5
    train). Parameters after the last map belong to no stage and keep their state: a head above the
    features, such as the fc6/fc7 R-CNN fine-tunes, is not a feature stage."""
    if trainable_stages is None:
        return
    try:
        stages = backbone.stage_parameters()
    except StagesUnavailable as err:
        raise ValueError(f"trainable_stages: {err}; use trainable_stages: null (or freeze by parameter name)"
                         ) from err
    if not 0 <= trainable_stages <= len(stages):
        raise ValueError(f"trainable_stages must be between 0 and {len(stages)} (the backbone's stages), "
                         f"got {trainable_stages}")
    first_trained = len(stages) - trainable_stages
    for index, stage in enumerate(stages):
        for _, p in stage:
            p.requires_grad_(index >= first_trained)


class BackboneFeatures(nn.Module):
    """``forward(x) -> OrderedDict[str, Tensor]`` of the backbone maps at ``indices`` of ``feature_info``,
    as torchvision's detection models expect; ``fpn=True`` puts a feature pyramid (Lin et al.) over them
    with ``fpn_channels`` channels and an extra max-pooled level ("pool"). ``out_channels`` and
    ``strides`` describe the outputs."""

    def __init__(self, backbone: nn.Module, indices: Sequence[int] = (-1,), fpn: bool = False,
                 fpn_channels: int = 256):
        super().__init__()
        self.body = backbone
        self.indices = sorted({backbone.feature_index(i) for i in indices})
        infos = [backbone.feature_info[i] for i in self.indices]
        self.names = [str(k) for k in range(len(self.indices))]
        self.fpn = FeaturePyramidNetwork([i.num_chs for i in infos], fpn_channels,
                                         extra_blocks=LastLevelMaxPool()) if fpn else None
        if fpn:
            self.out_channels = fpn_channels
            self.strides = [i.reduction for i in infos] + [infos[-1].reduction * 2]
            self.names = self.names + ["pool"]
        else:
            if len({i.num_chs for i in infos}) != 1:
                raise ValueError(f"feature maps {self.indices} have different widths {[i.num_chs for i in infos]}; "
                                 f"use fpn=True to combine several levels")
            self.out_channels = infos[0].num_chs
            self.strides = [i.reduction for i in infos]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        # only up to the deepest map read: the C4 layout's conv5_x does not run on the whole image
        maps = self.body.feature_maps(x, self.indices)
        selected = OrderedDict((str(k), m) for k, m in enumerate(maps))
        return self.fpn(selected) if self.fpn is not None else selected


class LastStageBoxHead(nn.Module):
    """The ResNet paper's Faster R-CNN head (S1 L650-656): RoIs are pooled from conv4_x (stride 16) and
    conv5_x, the backbone's last stage, runs on each pooled RoI, followed by global average pooling; the
    sibling classifier and regressor (torchvision's ``FastRCNNPredictor``) come after it."""

    def __init__(self, stage: nn.Module, out_channels: int):
        super().__init__()
        self.stage = stage
        self.out_channels = out_channels

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.stage(pooled).mean(dim=(2, 3)), 1)


def freeze_unused_parameters(backbone: nn.Module, indices: Sequence[int], in_chans: int, size: int) -> list[str]:
    """Stop training the backbone parameters that no feature map at ``indices`` depends on (a classifier
    the detector does not use, stages past the map it reads), found with one probe pass of a
    ``size`` x ``size`` image. Returns their names. Besides not training dead weights, this keeps DDP's
    gradient reducer from waiting for parameters that never receive a gradient."""
    was_training = backbone.training
    backbone.eval()
    named = [(name, p) for name, p in backbone.named_parameters() if p.requires_grad]
    with torch.enable_grad():
        maps = backbone.feature_maps(torch.zeros(1, in_chans, size, size), indices)
        total = sum(m.float().sum() for m in maps)
        if named and total.requires_grad:
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
        else:  # every parameter the maps depend on is already frozen (e.g. by trainable_stages)
            grads = [None] * len(named)
    backbone.train(was_training)
    unused = []
    for (name, p), grad in zip(named, grads):
        if grad is None:
            p.requires_grad_(False)
            unused.append(name)
    return unused
