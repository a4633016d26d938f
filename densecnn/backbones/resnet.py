"""ResNet (He et al. 2015, "Deep Residual Learning", S1 L378-415 and L513-568 in shared/seeds).

Reads next to Table 1: a stem, then stages ``layer1..layerN`` of basic (3x3, 3x3) or bottleneck
(1x1, 3x3, 1x1x4) blocks; the first block of stages 2+ downsamples with stride 2. Attribute names follow
torchvision (conv1, bn1, layer1.0.downsample.0, fc, ...) so its state_dicts load unchanged.

Shortcut options (Section 4.1, "Identity vs. Projection Shortcuts"):
  A  identity, zero-padding the extra channels (no parameters) -- the CIFAR networks use it;
  B  projection (1x1 conv + BN) only where the shape changes, identity elsewhere -- the paper's default;
  C  projection on every block;
  none  no shortcut at all: the "plain" baselines.
"""
from __future__ import annotations

from typing import Literal, Type

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, FeatureInfo, linear_or_identity
from .registry import register_backbone

Shortcut = Literal["A", "B", "C", "none"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the ResNet blocks' convolution, He et al. 2015 Table 1).

    Args:
        in_planes, out_planes: channels in and out.
        stride: the stride (2 where a stage halves the resolution).
    """
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (bottleneck reductions and projection shortcuts, He et al. 2015 Section 3.3).

    Args:
        in_planes, out_planes: channels in and out.
        stride: the stride.
    """
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels; parameter-free."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.extra_channels = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """[3x3, w; 3x3, w]; the second ReLU comes after the addition (Eq. 1)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 residual: bool = True):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """[1x1, w; 3x3, w; 1x1, 4w] (Fig. 5). ``stride_in_1x1`` puts the stride on the first 1x1 as the
    original Caffe model did (3.8 GFLOPs for ResNet-50); the default strides the 3x3 as torchvision does."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 residual: bool = True, stride_in_1x1: bool = False):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(in_planes, width, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if stride_in_1x1 else stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = Type[BasicBlock] | Type[Bottleneck]


class ResNet(Backbone):
    """A stem, then one stage per entry of ``layers`` with widths ``widths`` (Table 1 / Section 4.2).

    ``stem="imagenet"``: 7x7/2 conv, 3x3/2 max-pool (224 input, stages at strides 4, 8, 16, 32).
    ``stem="cifar"``: one 3x3 conv with ``widths[0]`` filters and no pooling (32 input, strides 1, 2, 4).
    """

    def __init__(self, block: Block, layers: list[int], *, num_classes: int = 1000,
                 widths: tuple[int, ...] = (64, 128, 256, 512), stem: Literal["imagenet", "cifar"] = "imagenet",
                 shortcut: Shortcut = "B", in_chans: int = 3, zero_init_residual: bool = False,
                 stride_in_1x1: bool = False):
        super().__init__()
        if shortcut not in ("A", "B", "C", "none"):
            raise ValueError(f"shortcut must be one of 'A', 'B', 'C', 'none', got {shortcut!r}")
        self.block, self.shortcut, self.stride_in_1x1 = block, shortcut, stride_in_1x1
        self.num_classes = num_classes
        self.in_planes = 64 if stem == "imagenet" else widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, self.in_planes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stem_reduction, reduction = 2, 4
        else:
            self.conv1 = conv3x3(in_chans, self.in_planes)
            self.maxpool = nn.Identity()
            stem_reduction, reduction = 1, 1
        self.bn1 = nn.BatchNorm2d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.feature_info = [FeatureInfo(self.in_planes, stem_reduction, "relu")]
        self.stage_names: list[str] = []
        for index, (width, depth) in enumerate(zip(widths, layers)):
            stride = 1 if index == 0 else 2
            reduction *= stride
            name = f"layer{index + 1}"
            setattr(self, name, self._make_layer(width, depth, stride))
            self.stage_names.append(name)
            self.feature_info.append(FeatureInfo(width * block.expansion, reduction, name))
        self.num_features = widths[len(layers) - 1] * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = linear_or_identity(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _shortcut(self, planes: int, stride: int) -> nn.Module | None:
        out_planes = planes * self.block.expansion
        changes_shape = stride != 1 or self.in_planes != out_planes
        if self.shortcut == "C" or (self.shortcut == "B" and changes_shape):
            return nn.Sequential(conv1x1(self.in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
        if self.shortcut == "A" and changes_shape:
            return ZeroPadShortcut(self.in_planes, out_planes, stride)
        return None

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        extra = {"stride_in_1x1": self.stride_in_1x1} if self.block is Bottleneck else {}
        residual = self.shortcut != "none"
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            layers.append(self.block(self.in_planes, planes, block_stride, self._shortcut(planes, block_stride),
                                     residual=residual, **extra))
            self.in_planes = planes * self.block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He et al. initialise "as in [13]" (Kaiming/MSRA); BN starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def stage_modules(self) -> list[list[str]]:
        # stage 0 is the stem up to its ReLU (the first map, timm's act1); the max-pool opens stage 1 (conv2_x)
        first, *rest = self.stage_names
        return [["conv1", "bn1", "relu"], ["maxpool", first], *[[name] for name in rest]]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        last = self.feature_index(max_index)
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x]
        if last == 0:
            return features
        x = self.maxpool(x)
        for name in self.stage_names[:last]:
            x = getattr(self, name)(x)
            features.append(x)
        return features

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


_IMAGENET_DEPTHS: dict[int, tuple[Block, list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def _register_imagenet(depth: int) -> None:
    block, layers = _IMAGENET_DEPTHS[depth]

    @register_backbone(f"resnet{depth}", paper="He et al. 2015, Table 1 (option B shortcuts)")
    def build(num_classes: int = 1000, **kwargs) -> ResNet:
        return ResNet(block, layers, num_classes=num_classes, **kwargs)

    if block is BasicBlock:
        @register_backbone(f"plain_resnet{depth}", paper="He et al. 2015, Fig. 3 middle (plain baseline)")
        def build_plain(num_classes: int = 1000, **kwargs) -> ResNet:
            return ResNet(block, layers, num_classes=num_classes, shortcut="none", **kwargs)


def _register_cifar(n: int) -> None:
    depth = 6 * n + 2

    @register_backbone(f"cifar_resnet{depth}", paper="He et al. 2015, Section 4.2 (CIFAR-10, 6n+2, option A)",
                       input_size=(3, 32, 32), default_num_classes=10)
    def build(num_classes: int = 10, **kwargs) -> ResNet:
        kwargs.setdefault("shortcut", "A")
        return ResNet(BasicBlock, [n, n, n], num_classes=num_classes, widths=(16, 32, 64), stem="cifar", **kwargs)


for _depth in _IMAGENET_DEPTHS:
    _register_imagenet(_depth)
for _n in (3, 5, 7, 9, 18, 200):
    _register_cifar(_n)
