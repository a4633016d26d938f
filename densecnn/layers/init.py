"""Weight initialisations used by the papers (S3 "Initialization", SEED_NOTES 3.9).

* ``init_gaussian``: AlexNet's N(0, 0.01) weights with chosen biases (1 in conv2/4/5 and the hidden FC
  layers "to accelerate the early stages of learning by providing the ReLUs with positive inputs", 0 elsewhere).
* ``init_he``: He et al. 2015 ("MSRA", "Xavier/2"): N(0, 2 / fan), the ResNets' and VGG-in-torchvision's choice.
* ``init_xavier``: Glorot & Bengio 2010: U(+-sqrt(6 / (fan_in + fan_out))), GoogLeNet's Caffe "xavier".
Each applies to the conv and linear layers of ``module`` (recursively), sets biases, and returns ``module``.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, _WEIGHTED)]


def init_gaussian(module: nn.Module, std: float = 0.01, bias: float = 0.0) -> nn.Module:
    """AlexNet's initialisation (Krizhevsky et al. 2012 Section 5): weights N(0, ``std``), biases ``bias``, in
    every conv and linear layer of ``module``.

    Args:
        module: the network (changed in place and returned).
        std: the weights' standard deviation (0.01).
        bias: the biases' value (1 in AlexNet's conv2/4/5 and hidden FC layers).
    """
    for m in _layers(module):
        nn.init.normal_(m.weight, 0.0, std)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return module


def init_he(module: nn.Module, mode: Literal["fan_in", "fan_out"] = "fan_out", bias: float = 0.0) -> nn.Module:
    """He et al. 2015's initialisation ("MSRA", Section 2.2 of Delving Deep into Rectifiers): N(0, 2 / fan).

    Args:
        module: the network (changed in place and returned).
        mode: ``fan_out`` (torchvision's ResNets) or ``fan_in``.
        bias: the biases' value.
    """
    for m in _layers(module):
        nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return module


def init_xavier(module: nn.Module, bias: float = 0.0) -> nn.Module:
    """Glorot & Bengio 2010's initialisation: U(+-sqrt(6 / (fan_in + fan_out))), GoogLeNet's Caffe "xavier".

    Args:
        module: the network (changed in place and returned).
        bias: the biases' value.
    """
    for m in _layers(module):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return module
