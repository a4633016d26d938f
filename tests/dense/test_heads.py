"""The three-scale network: the paper's sizes, its layers, and any registered backbone as scale 1."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from densecnn import create_backbone, list_backbones
from densecnn.heads import MultiScaleDenseHead, MultiScaleDenseNet


def _small_head_kwargs():
    return dict(coarse_pool=(2, 3), coarse_hidden=32, coarse_channels=8, coarse_size=(4, 5),
                scale2_image_channels=8, scale2_widths=(8,), scale3_image_channels=8, scale3_widths=(8,))


def test_paper_input_gives_the_paper_map_sizes():
    """304x228 input: scale 1 predicts 19x14, scale 2 works at 74x55 and scale 3 outputs 147x109 (S3 L4270)."""
    head = MultiScaleDenseHead(256, ["depth", "normals", "semantic"], num_classes=13, coarse_hidden=64)
    image = torch.randn(1, 3, 228, 304)
    features = torch.randn(1, 256, 6, 8)  # AlexNet's pool5 on 304x228 (no pool5 module here: read as it is)
    assert head.scale1(features).shape == (1, 64, 14, 19)
    scale2, scale3 = head.forward_scales(image, features)
    assert scale2["depth"].shape == (1, 1, 55, 74) and scale2["semantic"].shape == (1, 13, 55, 74)
    assert scale3["depth"].shape == (1, 1, 109, 147)
    assert scale3["normals"].shape == (1, 3, 109, 147) and scale3["semantic"].shape == (1, 13, 109, 147)
    torch.testing.assert_close(scale3["normals"].norm(dim=1), torch.ones(1, 109, 147))


def test_layers_follow_the_paper_table():
    head = MultiScaleDenseHead(256, ["depth", "semantic"], num_classes=13, coarse_hidden=4096)
    assert head.scale1.full6.out_features == 4096 and head.scale1.full6.in_features == 256 * 6 * 8
    assert head.scale1.full7.out_features == 64 * 14 * 19
    conv = head.scale2.image_conv
    assert (conv.out_channels, conv.kernel_size, conv.stride) == (96, (9, 9), (2, 2))
    assert head.scale3.image_conv.out_channels == 64
    convs2 = [m for m in head.scale2.stacks["depth"] if isinstance(m, nn.Conv2d)]
    assert [c.in_channels for c in convs2] == [96 + 64, 64, 64, 64]  # "96+64" then 5x5 64, 64, 64, output
    assert [c.out_channels for c in convs2] == [64, 64, 64, 1] and all(c.kernel_size == (5, 5) for c in convs2)
    convs3 = [m for m in head.scale3.stacks["semantic"] if isinstance(m, nn.Conv2d)]
    assert convs3[0].in_channels == 64 + 1 + 13  # "64+C": every target's scale-2 prediction
    assert [c.out_channels for c in convs3] == [64, 64, 13]
    assert [type(m) for m in head.scale2.stacks["depth"]].count(nn.ReLU) == 3  # output layer is linear


def test_validation_of_targets():
    with pytest.raises(ValueError, match="num_classes"):
        MultiScaleDenseHead(8, ["semantic"])
    with pytest.raises(ValueError, match="unknown dense target"):
        MultiScaleDenseHead(8, ["albedo"])


@pytest.mark.parametrize("name,kwargs,size", [("resnet18", {}, (64, 80)), ("cifar_resnet20", {}, (40, 56)),
                                              ("lenet5", {"in_chans": 3}, (48, 64))])
def test_any_backbone_works_as_scale_one(name, kwargs, size):
    net = MultiScaleDenseNet(create_backbone(name, num_classes=0, **kwargs), ["depth", "normals"], **_small_head_kwargs())
    out = net(torch.randn(2, 3, *size))
    assert out["depth"].shape[:2] == (2, 1) and out["normals"].shape[:2] == (2, 3)
    loss = out["depth"].mean() + out["normals"].sum(1).mean()
    loss.backward()
    first = next(net.backbone.parameters())  # the stem: gradients reach the start of scale 1
    assert first.grad is not None and float(first.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_paper_backbones_when_registered(name):
    if name not in list_backbones():
        pytest.skip(f"{name} is not registered in this checkout")
    backbone = create_backbone(name, num_classes=0)
    net = MultiScaleDenseNet(backbone, ["depth"], coarse_hidden=64)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 228, 304))
    assert out["depth"].shape == (1, 1, 109, 147)
