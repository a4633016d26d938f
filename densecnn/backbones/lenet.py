"""LeNet-5 (LeCun et al. 1998; S2 L440-477 in shared/seeds).

INPUT 32x32 -> C1 6@28x28 -> S2 6@14x14 -> C3 16@10x10 -> S4 16@5x5 -> C5 120 -> F6 84 -> OUTPUT,
in the slides' order CONV-POOL-TANH. Simplifications against LeCun et al. 1998, as every modern port makes:

* C3 connects to all six S2 maps (the paper's sparse connection table, Table I, is not used).
* S2 and S4 are plain 2x2/2 averages (``nn.AvgPool2d``, no parameters). In the paper each subsampling map
  adds its four inputs, multiplies the sum by a trainable coefficient and adds a trainable bias before the
  squashing (12 and 32 parameters); here the tanh sees the bare average.
* The squashing function is ``torch.tanh(a)``, after S2, S4, C5 and F6; the paper's is the scaled
  1.7159 tanh(2a/3) (Appendix A), chosen so that f(+-1) = +-1.
* The output is a linear layer rather than the paper's Gaussian (RBF) connections, trained with
  cross-entropy rather than the paper's MAP criterion.
* Weights start from PyTorch's default initialisation, not the paper's U(-2.4/F_in, 2.4/F_in).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, FeatureInfo, linear_or_identity
from .registry import register_backbone


class LeNet5(Backbone):
    """LeNet-5 of LeCun et al. 1998 (C1-S2-C3-S4-C5-F6-output) on 32x32 inputs.

    Simplifications the paper does not make: S2/S4 are parameter-free 2x2 averages, the squashing is plain
    ``tanh``, C3 is fully connected and the output layer linear (not RBF).

    Args:
        num_classes: output width (10 digits).
        in_chans: input channels (1: greyscale).
    """
    classifier_name = "output"

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.c1 = nn.Conv2d(in_chans, 6, 5)
        self.s2 = nn.AvgPool2d(2, 2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.AvgPool2d(2, 2)
        self.c5 = nn.Conv2d(16, 120, 5)  # a 5x5 conv over the 5x5 S4 maps: a fully connected layer
        self.f6 = nn.Linear(120, 84)
        self.num_features = 84
        self.output = linear_or_identity(84, num_classes)
        self.feature_info = [FeatureInfo(6, 2, "s2"), FeatureInfo(16, 4, "s4"), FeatureInfo(120, 4, "c5")]

    def forward_features(self, x: torch.Tensor, max_index: int | None = None) -> list[torch.Tensor]:
        last = self.feature_index(max_index)
        features = [torch.tanh(self.s2(self.c1(x)))]
        if last >= 1:
            features.append(torch.tanh(self.s4(self.c3(features[-1]))))
        if last >= 2:
            features.append(torch.tanh(self.c5(features[-1])))
        return features

    def stage_modules(self) -> list[list[str]]:
        return [["c1", "s2"], ["c3", "s4"], ["c5"]]  # F6 and the output layer are the head

    def stage_module(self, index: int) -> nn.Module:
        # the squashing is functional in forward_features: add it, so the stage maps map i-1 to map i
        modules = [self.get_submodule(path) for path in self.stage_modules()[index]]
        return nn.Sequential(*modules, nn.Tanh())

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # C5 is 1x1 on a 32x32 input; average any larger map so other input sizes still classify.
        x = torch.flatten(x, 2).mean(dim=2)  # (every position: time too when inflated)
        return self.output(torch.tanh(self.f6(x)))


@register_backbone("lenet5", paper="LeCun et al. 1998 (S2 L440-477)", input_size=(1, 32, 32), default_num_classes=10)
def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    """Build ``LeNet5`` (LeCun et al. 1998).

    Args:
        num_classes: output width.
        **kwargs: passed to ``LeNet5`` (``in_chans``).
    """
    return LeNet5(num_classes=num_classes, **kwargs)
