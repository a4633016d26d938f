"""ZF-Net (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks", Figure 3).

The seeds name it only (S0 L1204-1208, S3 L1296, "2013 best 11.2%"); the layers below are the paper's
Figure 3, which changes AlexNet in the ways its deconvnet visualisations suggested (Section 4.1):

    input 224x224x3
    layer 1:  96 @ 7x7 / 2 (was 11x11 / 4: fewer dead and aliased filters) -> 110x110, ReLU,
              max-pool 3x3/2 -> 55x55, contrast normalisation across maps
    layer 2: 256 @ 5x5 / 2 -> 26x26, ReLU, max-pool 3x3/2 -> 13x13, contrast normalisation
    layers 3, 4, 5: 384, 384, 256 @ 3x3 / 1 -> 13x13, dense connections (AlexNet's sparse two-tower
              connections replaced), max-pool 3x3/2 -> 6x6
    FC6 4096, FC7 4096 (dropout 0.5), C-way softmax

Paddings (1 on layer 1) and Caffe's ceil-mode pooling are the ones that give Figure 3's map sizes.
The normalisation "across feature maps" is AlexNet's LRN (``alexnet.paper_lrn``).
"""
from __future__ import annotations

from torch import nn

from ..layers.init import init_gaussian
from .alexnet import paper_lrn
from .registry import register_backbone
from .sequential import SequentialBackbone, fc_head, flat_pool


class ZFNet(SequentialBackbone):
    """Feature maps: layers 1, 2 and 5 after their ReLU (strides 2, 8, 16)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 7, stride=2, padding=1), nn.ReLU(inplace=True),       # 0-1   110x110
            nn.MaxPool2d(3, stride=2, ceil_mode=True), paper_lrn(),                         # 2-3   55x55
            nn.Conv2d(96, 256, 5, stride=2), nn.ReLU(inplace=True),                         # 4-5   26x26
            nn.MaxPool2d(3, stride=2, ceil_mode=True), paper_lrn(),                         # 6-7   13x13
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),                       # 8-9
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),                       # 10-11
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),                       # 12-13
            nn.MaxPool2d(3, stride=2, ceil_mode=True),                                      # 14    6x6
        )
        classifier, hidden = fc_head(256 * 6 * 6, 4096, num_classes, dropout, dropout_first=False)
        super().__init__(features, [(1, 96, 2), (5, 256, 8), (13, 256, 16)], flat_pool(6), classifier,
                         num_classes=num_classes, num_features=hidden, classifier_name="classifier.6")
        # Section 3: "All weights initialized to 10^-2 and biases set to 0".
        init_gaussian(self, std=0.01, bias=0.0)


@register_backbone("zfnet", paper="Zeiler & Fergus 2013, Fig. 3 (outside the seeds)")
def zfnet(num_classes: int = 1000, **kwargs) -> ZFNet:
    """ZF-Net of Zeiler & Fergus 2013 (Fig. 3): AlexNet with a 7x7/2 first layer and dense connections.

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``ZFNet``.
    """
    return ZFNet(num_classes=num_classes, **kwargs)
