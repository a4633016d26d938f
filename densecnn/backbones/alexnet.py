"""AlexNet (Krizhevsky, Sutskever & Hinton 2012; S1 L64-190, S2 L481-611 in shared/seeds).

Section 3.5 / Figure 2, read top to bottom:

    input 227x227x3 (the paper says 224, but (224 - 11) / 4 + 1 is not an integer: 227 gives 55)
    conv1  96 @ 11x11 / 4            -> 55x55   ReLU, LRN, max-pool 3x3/2 -> 27x27
    conv2 256 @ 5x5, pad 2, 2 groups -> 27x27   ReLU, LRN, max-pool 3x3/2 -> 13x13
    conv3 384 @ 3x3, pad 1           -> 13x13   ReLU   (the one conv layer that talks across GPUs)
    conv4 384 @ 3x3, pad 1, 2 groups -> 13x13   ReLU
    conv5 256 @ 3x3, pad 1, 2 groups -> 13x13   ReLU, max-pool 3x3/2 -> 6x6
    FC6 4096, ReLU, dropout 0.5; FC7 4096, ReLU, dropout 0.5; FC8 1000

The two-GPU split (Section 3.2) is ``groups=2``: each half of conv2/4/5's kernels sees only the maps on
its own GPU. Registered variants:

* ``alexnet``: that network (60,965,224 parameters).
* ``alexnet_1tower``: the same widths on one tower (groups=1; 62,378,344 parameters, the slides' table).
* ``alexnet_torchvision``: torchvision's ``alexnet`` (Krizhevsky's "one weird trick" single-tower widths
  64/192/384/256/256, no LRN, adaptive 6x6 average pool, dropout before FC6/FC7); its state_dicts,
  including ``torchvision:AlexNet_Weights.IMAGENET1K_V1``, load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers.init import init_gaussian
from ..weights import WeightsError
from .registry import register_backbone
from .sequential import SequentialBackbone, fc_head, flat_pool

PAPER = "Krizhevsky et al. 2012, Section 3.5 / Fig. 2"


def paper_lrn(size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> nn.LocalResponseNorm:
    """Section 3.3's response normalization b_i = a_i / (k + alpha * sum_j a_j^2)^beta over ``size`` maps.

    ``nn.LocalResponseNorm`` (like Caffe) divides ``alpha`` by ``size``; multiplying by ``size`` here gives the
    paper's formula with its constants k=2, n=5, alpha=1e-4, beta=0.75.
    """
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)


class AlexNet(SequentialBackbone):
    """The paper's network (``groups=2``: two towers; ``groups=1``: one tower of the same widths).

    Feature maps: conv1, conv2 and conv5 after their ReLU (strides 4, 8, 16).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, groups: int = 2, dropout: float = 0.5,
                 lrn: bool = True):
        norm = paper_lrn if lrn else nn.Identity
        features = nn.Sequential(
            nn.Conv2d(in_chans, 96, 11, stride=4), nn.ReLU(inplace=True),                     # 0-1   conv1
            norm(), nn.MaxPool2d(3, stride=2),                                                 # 2-3   overlapping pool
            nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(inplace=True),            # 4-5   conv2
            norm(), nn.MaxPool2d(3, stride=2),                                                 # 6-7
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),                          # 8-9   conv3
            nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(inplace=True),           # 10-11 conv4
            nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(inplace=True),           # 12-13 conv5
            nn.MaxPool2d(3, stride=2),                                                         # 14
        )
        classifier, hidden = fc_head(256 * 6 * 6, 4096, num_classes, dropout, dropout_first=False)
        # 6x6 at 227 input (an identity there); other input sizes are averaged to the 6x6 FC6 expects.
        super().__init__(features, [(1, 96, 4), (5, 256, 8), (13, 256, 16)], flat_pool(6),
                         classifier, num_classes=num_classes, num_features=hidden,
                         classifier_name="classifier.6")
        self.groups = groups
        self._init_weights()

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Called by ``densecnn.load_weights``: point torchvision's weights at the variant they fit."""
        conv1 = state_dict.get("features.0.weight")
        if conv1 is not None and conv1.shape[0] == 64:
            raise WeightsError("these are torchvision's AlexNet weights (64 conv1 filters, no LRN): build "
                               "'alexnet_torchvision' to load them; 'alexnet' is the paper's two-tower network")
        return state_dict

    def _init_weights(self) -> None:
        # Section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers ("provides
        # the ReLUs with positive inputs"), 0 elsewhere.
        init_gaussian(self, std=0.01, bias=0.0)
        for index in (4, 10, 12):
            nn.init.ones_(self.features[index].bias)
        for index in (0, 3):
            nn.init.ones_(self.classifier[index].bias)


class TorchvisionAlexNet(SequentialBackbone):
    """torchvision's ``alexnet`` layout, key for key (``features.0`` ... ``classifier.6``)."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        features = nn.Sequential(
            nn.Conv2d(in_chans, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
        )
        classifier, hidden = fc_head(256 * 6 * 6, 4096, num_classes, dropout, dropout_first=True)
        super().__init__(features, [(1, 64, 4), (4, 192, 8), (11, 256, 16)], flat_pool(6), classifier,
                         num_classes=num_classes, num_features=hidden, classifier_name="classifier.6")


@register_backbone("alexnet", paper=PAPER + " (two towers: groups=2 in conv2/4/5)", input_size=(3, 227, 227))
def alexnet(num_classes: int = 1000, **kwargs) -> AlexNet:
    """AlexNet as in Krizhevsky et al. 2012 (Section 3.5, Fig. 2): two towers (groups=2 in conv2/4/5), LRN,
    overlapping pooling, 227x227 input.

    Args:
        num_classes: classifier width (1000 for ImageNet).
        **kwargs: passed to ``AlexNet`` (e.g. ``in_chans``, ``dropout``).
    """
    return AlexNet(num_classes=num_classes, groups=2, **kwargs)


@register_backbone("alexnet_1tower", paper=PAPER + " (one tower, same widths)", input_size=(3, 227, 227))
def alexnet_1tower(num_classes: int = 1000, **kwargs) -> AlexNet:
    """AlexNet with one tower of the same widths (groups=1; Krizhevsky et al. 2012, Section 3.5 compares it).

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``AlexNet``.
    """
    return AlexNet(num_classes=num_classes, groups=1, **kwargs)


@register_backbone("alexnet_torchvision", paper="Krizhevsky 2014, 'One weird trick' (torchvision's alexnet)")
def alexnet_torchvision(num_classes: int = 1000, **kwargs) -> TorchvisionAlexNet:
    """torchvision's AlexNet layout (Krizhevsky 2014, "One weird trick"): its state_dicts load unchanged.

    Args:
        num_classes: classifier width.
        **kwargs: passed to ``TorchvisionAlexNet``.
    """
    return TorchvisionAlexNet(num_classes=num_classes, **kwargs)
