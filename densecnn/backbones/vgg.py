"""VGG (Simonyan & Zisserman 2014, Table 1; S3 L1053-1222, S4 L536-663, S2 L615-791 in shared/seeds).

Every convolution is 3x3 / 1, pad 1 (config C also has 1x1 convolutions, pad 0), followed by ReLU; every
max-pool is 2x2 / 2; the head is FC-4096, FC-4096 (dropout 0.5 after each), FC-1000.

    A      (11 layers)  64 | M | 128 | M | 256 256 | M | 512 512 | M | 512 512 | M
    A-LRN  (11)         A with LRN after the first conv (Section 4.1: it does not help)
    B      (13)         64 64 | M | 128 128 | M | 256 256 | M | 512 512 | M | 512 512 | M
    C      (16)         B + conv1-256 / conv1-512 / conv1-512 as the third layer of blocks 3, 4, 5
    D      (16)         B + a third 3x3 in blocks 3, 4, 5                   (VGG-16)
    E      (19)         B + a third and fourth 3x3 in blocks 3, 4, 5         (VGG-19)

Names follow torchvision: ``vgg11`` (A), ``vgg11_lrn``, ``vgg13`` (B), ``vgg16_c`` (C), ``vgg16`` (D),
``vgg19`` (E), each also ``_bn`` (batch norm after each conv, not in the paper); the state_dicts of
torchvision's vgg11/13/16/19(_bn) load unchanged (same ``features.N`` / ``classifier.N`` indices).
Parameters (with biases): A 132,863,336; B 133,047,848; C 133,638,952; D 138,357,544; E 143,667,240.

Feature maps: the last ReLU of each block, before its pool (strides 1, 2, 4, 8, 16; timm's convention,
and the conv5_3 map Fast R-CNN pools from). The fifth pool, 7x7 average pool and FCs form the head.
"""
from __future__ import annotations

from typing import Union

from torch import nn

from .alexnet import paper_lrn
from .registry import register_backbone
from .sequential import SequentialBackbone, fc_head, flat_pool

# an int is a 3x3 conv of that width, ("1x1", w) a 1x1 conv, "M" a 2x2/2 max-pool, "LRN" AlexNet's LRN
Layer = Union[int, tuple[str, int], str]

CONFIGS: dict[str, list[Layer]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, ("1x1", 256), "M", 512, 512, ("1x1", 512), "M",
          512, 512, ("1x1", 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


def make_features(config: list[Layer], in_chans: int = 3, batch_norm: bool = False
                  ) -> tuple[nn.Sequential, list[tuple[int, int, int]]]:
    """torchvision's ``make_layers`` (same indices), also returning the pre-pool taps."""
    layers: list[nn.Module] = []
    taps, channels, reduction = [], in_chans, 1
    for item in config:
        if item == "M":
            taps.append((len(layers) - 1, channels, reduction))
            layers.append(nn.MaxPool2d(2, stride=2))
            reduction *= 2
        elif item == "LRN":
            layers.append(paper_lrn())
        else:
            kernel, width = (1, item[1]) if isinstance(item, tuple) else (3, item)
            layers.append(nn.Conv2d(channels, width, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
    return nn.Sequential(*layers), taps


class VGG(SequentialBackbone):
    """VGG of Simonyan & Zisserman 2014, configurations A-E of Table 1 (and A-LRN, C with 1x1 layers),
    optionally with batch norm; torchvision's state_dicts load unchanged.

    Args:
        config: ``A``, ``A-LRN``, ``B``, ``C``, ``D`` (VGG-16) or ``E`` (VGG-19).
        num_classes: classifier width.
        in_chans: input channels.
        batch_norm: batch norm after every convolution (not in the paper).
        dropout: dropout in fc6/fc7 (0.5).
    """
    def __init__(self, config: str = "D", num_classes: int = 1000, in_chans: int = 3, batch_norm: bool = False,
                 dropout: float = 0.5):
        if config not in CONFIGS:
            raise ValueError(f"VGG config must be one of {', '.join(CONFIGS)}, got {config!r}")
        features, taps = make_features(CONFIGS[config], in_chans, batch_norm)
        classifier, hidden = fc_head(512 * 7 * 7, 4096, num_classes, dropout, dropout_first=False)
        # 7x7 at 224 input (an identity there), so other sizes still reach FC6 with 25,088 inputs.
        super().__init__(features, taps, flat_pool(7), classifier, num_classes=num_classes,
                         num_features=hidden, classifier_name="classifier.6")
        self.config = config
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper trains A from N(0, 0.01) and initialises deeper nets from it, noting Glorot's init works
        # as well (Section 3.1); from scratch we use He init for convs as torchvision does, N(0, 0.01) for FCs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


_NAMES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_c": "C", "vgg16": "D", "vgg19": "E"}


def _register(name: str, config: str, batch_norm: bool) -> None:
    paper = f"Simonyan & Zisserman 2014, Table 1 config {config}" + (" + batch norm" if batch_norm else "")

    @register_backbone(name + ("_bn" if batch_norm else ""), paper=paper)
    def build(num_classes: int = 1000, **kwargs) -> VGG:
        return VGG(config, num_classes=num_classes, batch_norm=batch_norm, **kwargs)


for _name, _config in _NAMES.items():
    _register(_name, _config, False)
    _register(_name, _config, True)
