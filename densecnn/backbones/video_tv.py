"""torchvision's video ResNets as densecnn backbones: R3D-18, MC3-18 and R(2+1)D-18 (Tran et al. 2018,
"A Closer Look at Spatiotemporal Convolutions for Action Recognition").

R3D is a ResNet-18 of full 3x3x3 convolutions (C3D's kernels with residual blocks); MC3 ("mixed
convolutions") keeps 3D convolutions only in its first stage and uses 1x3x3 spatial ones after; R(2+1)D
factorises each 3x3x3 into a 1x3x3 spatial and a 3x1x1 temporal convolution. The modules are torchvision's
own (``stem``, ``layer1..4``, ``avgpool``, ``fc``) under the same attribute names, so a torchvision
state_dict (e.g. ``torchvision:R3D_18_Weights.KINETICS400_V1``) loads unchanged.
"""
from __future__ import annotations

import torch
import torchvision.models.video as tv_video
from torch import nn

from .base import Backbone, FeatureInfo
from .registry import register_backbone

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class TorchvisionVideoResNet(Backbone):
    """Wraps ``torchvision.models.video.<arch>``; features: stem, then layer1..layer4."""

    def __init__(self, arch: str, num_classes: int = 400, **kwargs):
        super().__init__()
        model = getattr(tv_video, arch)(weights=None, num_classes=max(num_classes, 1), **kwargs)
        self.arch = arch
        self.num_classes = num_classes
        self.stem = model.stem
        for name in _STAGES:
            setattr(self, name, getattr(model, name))
        self.avgpool = model.avgpool
        self.num_features = model.fc.in_features
        self.fc = model.fc if num_classes > 0 else nn.Identity()
        # Spatial strides: the stem's (1, 2, 2) convolution, then layers 2-4 each halve H and W.
        self.feature_info = [FeatureInfo(64, 2, "stem"), FeatureInfo(64, 2, "layer1"), FeatureInfo(128, 4, "layer2"),
                             FeatureInfo(256, 8, "layer3"), FeatureInfo(512, 16, "layer4")]

    def stage_modules(self) -> list[list[str]]:
        return [["stem"], *[[name] for name in _STAGES]]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        if x.dim() != 5:
            raise ValueError(f"{self.arch} expects clips (N, C, T, H, W), got a tensor of shape {tuple(x.shape)}")
        x = self.stem(x)
        features = [x]
        for name in _STAGES[:self.feature_index(max_index)]:
            x = getattr(self, name)(x)
            features.append(x)
        return features

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(arch: str, paper: str) -> None:
    @register_backbone(arch, paper=paper, input_size=(3, 16, 112, 112), default_num_classes=400)
    def build(num_classes: int = 400, **kwargs) -> TorchvisionVideoResNet:
        return TorchvisionVideoResNet(arch, num_classes=num_classes, **kwargs)


_register("r3d_18", "Tran et al. 2018, R3D-18 (torchvision)")
_register("mc3_18", "Tran et al. 2018, MC3-18 (torchvision)")
_register("r2plus1d_18", "Tran et al. 2018, R(2+1)D-18 (torchvision)")
