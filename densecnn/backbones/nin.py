"""Network in Network (Lin, Chen & Yan 2013; S4 L1108-1408, S0 L1135-1140 in shared/seeds).

An mlpconv layer is a micro-MLP slid over the input: a convolution followed by two 1x1 convolutions,
each with ReLU (f = max(w^T x, 0)). Three or four mlpconv layers with pooling between them end in a
layer that produces one map per class, and global average pooling turns the maps into class scores
(no fully connected layer: fewer parameters, a structural regulariser, any input size).

The seeds do not give layer sizes; these are the authors' released Caffe models:

* ``nin`` (ImageNet, 224 input, ~7.6M parameters): mlpconv 96 (11x11/4) | 256 (5x5) | 384 (3x3), each
  followed by 3x3/2 max-pool, dropout 0.5, then mlpconv 1024 (3x3) -> 1024 -> classes, GAP.
* ``nin_cifar`` (CIFAR-10, 32 input): mlpconv 192-160-96 (5x5) | 3x3/2 max-pool, dropout |
  192-192-192 (5x5) | 3x3/2 avg-pool, dropout | 192-192-classes (3x3), GAP.

As in those models the class maps pass through ReLU before the average. The last 1x1 convolution is the
classifier (``classifier``); with ``num_classes=0`` it is left out and ``forward`` returns the GAP of the
previous 1x1 layer.
"""
from __future__ import annotations

from torch import nn

from .registry import register_backbone
from .sequential import SequentialBackbone, gap


def mlpconv(in_channels: int, widths: tuple[int, int, int], kernel: int, stride: int = 1,
            padding: int = 0) -> list[nn.Module]:
    """conv(kernel) -> ReLU -> 1x1 -> ReLU -> 1x1 -> ReLU."""
    a, b, c = widths
    return [nn.Conv2d(in_channels, a, kernel, stride, padding), nn.ReLU(inplace=True),
            nn.Conv2d(a, b, 1), nn.ReLU(inplace=True), nn.Conv2d(b, c, 1), nn.ReLU(inplace=True)]


class ClassMaps(nn.Sequential):
    """The final 1x1 conv to one map per class, then ReLU (the NiN/All-CNN classifier)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(nn.Conv2d(in_channels, num_classes, 1), nn.ReLU(inplace=True))


class NiN(SequentialBackbone):
    """Network in Network (Lin et al. 2013): mlpconv stages (a convolution followed by 1x1 convolutions) and a
    global-average-pooled class map instead of fully connected layers.

    Args:
        stages: the layers of each stage; the last stage's final layers are the classifier.
        widths, reductions: channels and stride of each stage's output map (``feature_info``).
        last_width: channels of the deepest feature map.
        num_classes: classes of the class map.
    """
    def __init__(self, stages: list[list[nn.Module]], widths: list[int], reductions: list[int], last_width: int,
                 num_classes: int):
        layers, taps = [], []
        for stage, width, reduction in zip(stages, widths, reductions):
            layers += stage
            taps.append((len(layers) - 1, width, reduction))
        # the class maps come before the GAP: it is part of the classifier (pool is only used without one)
        classifier = (nn.Sequential(ClassMaps(last_width, num_classes), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                      if num_classes > 0 else nn.Identity())
        pool = nn.Identity() if num_classes > 0 else gap()
        super().__init__(nn.Sequential(*layers), taps, pool, classifier, num_classes=num_classes,
                         num_features=last_width, classifier_name="classifier")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


@register_backbone("nin", paper="Lin et al. 2013, Network in Network (authors' ImageNet model)")
def nin(num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5) -> NiN:
    """NiN's ImageNet model (the authors' four-mlpconv network, 224x224 input).

    Args:
        num_classes: classes.
        in_chans: input channels.
        dropout: dropout after the third stage.
    """
    stages = [
        mlpconv(in_chans, (96, 96, 96), 11, stride=4) + [nn.MaxPool2d(3, 2, ceil_mode=True)],
        mlpconv(96, (256, 256, 256), 5, padding=2) + [nn.MaxPool2d(3, 2, ceil_mode=True)],
        mlpconv(256, (384, 384, 384), 3, padding=1) + [nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout)],
        # the fourth mlpconv's last layer is the classifier; its first two layers end the features
        mlpconv(384, (1024, 1024, 1024), 3, padding=1)[:4],
    ]
    return NiN(stages, [96, 256, 384, 1024], [8, 16, 32, 32], 1024, num_classes)


@register_backbone("nin_cifar", paper="Lin et al. 2013, Network in Network (authors' CIFAR-10 model)",
                   input_size=(3, 32, 32), default_num_classes=10)
def nin_cifar(num_classes: int = 10, in_chans: int = 3, dropout: float = 0.5) -> NiN:
    """NiN's CIFAR-10 model (three mlpconv stages, 32x32 input, Lin et al. 2013 Section 4.2).

    Args:
        num_classes: classes.
        in_chans: input channels.
        dropout: dropout after the first two stages.
    """
    stages = [
        mlpconv(in_chans, (192, 160, 96), 5, padding=2) + [nn.MaxPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout)],
        mlpconv(96, (192, 192, 192), 5, padding=2) + [nn.AvgPool2d(3, 2, ceil_mode=True), nn.Dropout(dropout)],
        mlpconv(192, (192, 192, 192), 3, padding=1)[:4],
    ]
    return NiN(stages, [96, 192, 192], [2, 4, 4], 192, num_classes)
