"""The one contract every registered backbone follows: ``forward_features`` returns the maps
``feature_info`` describes (channels, stride, producing module), shallow to deep, and ``forward`` gives
pooled features with ``num_classes=0`` and logits otherwise."""
from __future__ import annotations

import math

import pytest
import torch

from densecnn import list_backbones
from densecnn.backbones import get_entry
from tests.backbones.helpers import fast_backbone

# the smallest inputs that still leave every pooling window something to pool
SMALL = {"alexnet": 127, "alexnet_1tower": 127, "alexnet_torchvision": 127, "zfnet": 96, "nin": 96, "jarrett": 143}


def small_input(name: str) -> tuple[int, ...]:
    size = get_entry(name).input_size
    if len(size) == 4:  # video: C x T x H x W
        return (size[0], 8, 32, 32)
    side = SMALL.get(name, 16 if name.startswith("cifar_resnet") else min(size[-1], 64))
    return (size[0], side, side)


# the deepest nets (hundreds of blocks) take seconds even on tiny inputs: checked in the slow pass
HEAVY = {"cifar_resnet1202", "inflated_resnet101", "inflated_resnet152"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in list_backbones()])
def test_forward_features_matches_feature_info(name):
    size = small_input(name)
    try:  # backbones whose classifier is sized for one input (C3D's fc6) are told the input size
        model = fast_backbone(name, num_classes=0, input_size=size)
    except TypeError:
        model = fast_backbone(name, num_classes=0)
    info = model.feature_info
    x = torch.randn(1, *size)
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for entry in info:  # the first output of each named module
        module = model.get_submodule(entry.module)
        hooks.append(module.register_forward_hook(lambda m, i, o, key=entry.module: captured.setdefault(key, o)))
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model(x)
    for h in hooks:
        h.remove()

    assert isinstance(features, list) and len(features) == len(info) >= 1
    assert [f.shape[1] for f in features] == [e.num_chs for e in info]
    reductions = [e.reduction for e in info]
    assert reductions == sorted(reductions), "feature maps must go shallow to deep"
    for feature, entry in zip(features, info):
        # the module feature_info names runs and produces a map of that shape (LeNet applies its tanh after it)
        assert captured[entry.module].shape == feature.shape, entry
        # spatial size is the input's divided by the nominal stride, up to the borders of unpadded layers
        for axis in (-2, -1):
            expected = x.shape[axis] / entry.reduction
            # (LeNet's C5 is a 5x5 valid conv over 5x5 maps: 1x1 at a nominal stride of 4)
            assert expected / 8 <= feature.shape[axis] <= math.ceil(expected) + 1, (entry, feature.shape)
    assert pooled.shape == (1, model.num_features)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "googlenet", "bn_inception", "resnet18", "nin_cifar",
                                  "allcnn_c", "zfnet", "jarrett", "lenet5"])
def test_forward_gives_logits_with_a_classifier(name):
    model = fast_backbone(name, num_classes=7)
    with torch.no_grad():
        logits = model(torch.randn(2, *small_input(name)))
    assert logits.shape == (2, 7)
    assert model.get_classifier() is not None and model.num_classes == 7
