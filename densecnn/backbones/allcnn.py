"""The All-Convolutional Net (Springenberg et al. 2015, "Striving for Simplicity", Tables 1-2;
S4 L1409-2472 in shared/seeds). CIFAR input 32x32x3, every layer followed by ReLU.

Base models (Table 1), two blocks each followed by a 3x3/2 max-pool:
    A: 5x5 conv 96                  | 5x5 conv 192
    B: 5x5 conv 96, 1x1 conv 96     | 5x5 conv 192, 1x1 conv 192
    C: 3x3 conv 96, 3x3 conv 96     | 3x3 conv 192, 3x3 conv 192
then the shared top: 3x3 conv 192 (unpadded: 8x8 -> 6x6), 1x1 conv 192, 1x1 conv 10, global average
over 6x6, softmax.

Derived models (Table 2), for each of A, B, C:
    strided:  the conv before each pool gets stride 2 and the pool is removed;
    convpool: an extra 3x3 conv (the pool's size, same width) before each max-pool;
    all:      each max-pool replaced by a 3x3 conv with stride 2 and the same width (All-CNN).
Registered as ``allcnn_<m>`` (All-CNN-m), ``allcnn_<m>_base``, ``allcnn_<m>_strided``, ``allcnn_<m>_convpool``.
Parameters (with biases): A 839,242; B 885,610; C 954,730; All-A 1,254,250; All-B 1,300,618;
All-C 1,369,738 (the paper rounds to 0.9M / 1M / 1.3M / 1.28M / 1.35M / 1.4M; its "C ~1.3M" is off).

Regularisation (Section 3.2.1): dropout 20% on the input and 50% after each pool or pool replacement.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from .nin import ClassMaps
from .registry import register_backbone
from .sequential import SequentialBackbone, gap

# (kernel, width) of the two convs, or one, in each block
BLOCKS = {
    "A": [[(5, 96)], [(5, 192)]],
    "B": [[(5, 96), (1, 96)], [(5, 192), (1, 192)]],
    "C": [[(3, 96), (3, 96)], [(3, 192), (3, 192)]],
}
VARIANTS = ("base", "strided", "convpool", "all")


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int | None = None):
    padding = kernel // 2 if padding is None else padding
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding), nn.ReLU(inplace=True)]


class AllCNN(SequentialBackbone):
    """Feature maps: each block's output after its pool (or pool replacement), then the top 1x1 conv
    (strides 2, 4, 4)."""

    def __init__(self, model: Literal["A", "B", "C"] = "C", variant: Literal["base", "strided", "convpool", "all"] = "all",
                 num_classes: int = 10, in_chans: int = 3, input_dropout: float = 0.2, dropout: float = 0.5):
        if model not in BLOCKS:
            raise ValueError(f"All-CNN model must be one of A, B, C, got {model!r}")
        if variant not in VARIANTS:
            raise ValueError(f"All-CNN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        taps, channels = [], in_chans
        for index, block in enumerate(BLOCKS[model]):
            for j, (kernel, width) in enumerate(block):
                stride = 2 if variant == "strided" and j == len(block) - 1 else 1
                layers += _conv(channels, width, kernel, stride)
                channels = width
            if variant == "convpool":
                layers += _conv(channels, channels, 3)
            if variant in ("base", "convpool"):
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif variant == "all":
                layers += _conv(channels, channels, 3, stride=2)
            layers.append(nn.Dropout(dropout))
            taps.append((len(layers) - 1, channels, 2 ** (index + 1)))
        layers += _conv(channels, 192, 3, padding=0) + _conv(192, 192, 1)
        taps.append((len(layers) - 1, 192, 4))
        classifier = (nn.Sequential(ClassMaps(192, num_classes), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                      if num_classes > 0 else nn.Identity())
        pool = nn.Identity() if num_classes > 0 else gap()
        super().__init__(nn.Sequential(*layers), taps, pool, classifier, num_classes=num_classes,
                         num_features=192, classifier_name="classifier")
        self.model, self.variant = model, variant
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


_TITLES = {"base": "Model {m}", "strided": "Strided-CNN-{m}", "convpool": "ConvPool-CNN-{m}", "all": "All-CNN-{m}"}


def _register(model: str, variant: str) -> None:
    name = f"allcnn_{model.lower()}" + ("" if variant == "all" else f"_{variant}")
    table = 1 if variant == "base" else 2
    paper = f"Springenberg et al. 2015, Table {table} ({_TITLES[variant].format(m=model)})"

    @register_backbone(name, paper=paper, input_size=(3, 32, 32), default_num_classes=10)
    def build(num_classes: int = 10, **kwargs) -> AllCNN:
        return AllCNN(model, variant, num_classes=num_classes, **kwargs)


for _model in BLOCKS:
    for _variant in VARIANTS:
        _register(_model, _variant)
