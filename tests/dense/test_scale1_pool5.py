"""Scale 1 is the ImageNet network up to its own pool5 (Eigen & Fergus, Sec. 3.1), then full_s1_6/7: the
map full_s1_6 reads is checked bit for bit against torchvision's networks on the same weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from densecnn import create_backbone
from densecnn.heads.dense import MultiScaleDenseNet, backbone_pool5
from tasks import DensePredictionTask

PAPER_INPUT = (228, 304)  # H x W: the paper's 304x228 crop
SMALL = dict(coarse_hidden=16, coarse_channels=4, coarse_size=(3, 4), scale2_image_channels=8,
             scale2_widths=(8,), scale3_image_channels=8, scale3_widths=(8,))


def _scale1_input(net: MultiScaleDenseNet, x: torch.Tensor) -> torch.Tensor:
    """The map full_s1_6 flattens, by the path ``forward`` takes."""
    return net.head.scale1.pooled(net.backbone.forward_features(x)[-1])


@torch.no_grad()
def test_alexnet_scale1_reads_torchvisions_pool5_exactly_at_the_paper_input():
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    backbone = create_backbone("alexnet_torchvision", num_classes=0)
    backbone.features.load_state_dict(reference.features.state_dict())
    net = MultiScaleDenseNet(backbone, ["depth"], coarse_pool=(6, 8), **SMALL).eval()
    x = torch.randn(2, 3, *PAPER_INPUT)
    pool5 = reference.features(x)  # conv1..conv5, then the pretrained 3x3/2 max-pool 5
    assert pool5.shape == (2, 256, 6, 8)  # the paper's 8x6 (W x H): the adaptive step is the identity
    assert torch.equal(_scale1_input(net, x), pool5)
    # checkpoints keep their shapes: full_s1_6 reads C x 6 x 8, and pool5 adds no state
    assert net.head.scale1.full6.in_features == 256 * 6 * 8
    assert sorted(net.head.scale1.state_dict()) == ["full6.bias", "full6.weight", "full7.bias", "full7.weight"]


@torch.no_grad()
def test_vgg16_scale1_is_pool5_then_the_stated_adaptive_average():
    torch.manual_seed(0)
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).eval()  # vgg16().features
    backbone = create_backbone("vgg16", num_classes=0)
    backbone.features.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, *PAPER_INPUT)
    pool5 = reference(x)
    assert pool5.shape == (1, 512, 7, 9)
    # coarse_pool at pool5's own size (the VGG recipes): nothing but pool5
    net = MultiScaleDenseNet(backbone, ["depth"], coarse_pool=(7, 9), **SMALL).eval()
    assert torch.equal(_scale1_input(net, x), pool5)
    # the default 6x8: pool5 averaged adaptively; cell (i, j) spans rows floor(7i/6)..ceil(7(i+1)/6) and
    # columns floor(9j/8)..ceil(9(j+1)/8), e.g. cell (0, 0) the 2x2 block, cell (5, 7) rows 5:7, columns 7:9
    net = MultiScaleDenseNet(backbone, ["depth"], coarse_pool=(6, 8), **SMALL).eval()
    pooled = _scale1_input(net, x)
    assert torch.equal(pooled, F.adaptive_avg_pool2d(pool5, (6, 8)))
    torch.testing.assert_close(pooled[..., 0, 0], pool5[..., 0:2, 0:2].mean((-2, -1)))
    torch.testing.assert_close(pooled[..., 5, 7], pool5[..., 5:7, 7:9].mean((-2, -1)))


@pytest.mark.parametrize("name, pool5_layers", [
    ("alexnet", [nn.MaxPool2d(3, stride=2)]),
    ("zfnet", [nn.MaxPool2d(3, stride=2, ceil_mode=True)]),
    ("resnet18", None), ("nin", None), ("googlenet", None),
])
def test_each_family_states_its_pool5(name, pool5_layers):
    """The sequential ImageNet networks give their max-pool 5 (the module objects, shared); the families whose
    deepest map goes straight to a global pooling give none, and scale 1 averages that map adaptively."""
    backbone = create_backbone(name, num_classes=0)
    pool5 = backbone_pool5(backbone)
    if pool5_layers is None:
        assert pool5 is None
        net = MultiScaleDenseNet(backbone, ["depth"], coarse_pool=(2, 3), **SMALL).eval()
        x = torch.randn(1, 3, 128, 160)
        with torch.no_grad():
            deepest = backbone.forward_features(x)[-1]
            assert torch.equal(_scale1_input(net, x), F.adaptive_avg_pool2d(deepest, (2, 3)))
        return
    assert [repr(m) for m in pool5] == [repr(m) for m in pool5_layers]
    assert pool5[0] is backbone.features[len(backbone.features) - 1]


def test_the_task_builds_scale1_on_the_backbones_pool5():
    task = DensePredictionTask(backbone="alexnet_torchvision", targets=["depth"], coarse_pool=[6, 8],
                               coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4], scale2_image_channels=8,
                               scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])
    assert task.head.scale1.pool5[0] is task.backbone.features[12]  # torchvision's features.12, the max-pool 5
    x = torch.randn(1, 3, *PAPER_INPUT)
    task.eval()
    with torch.no_grad():
        expected = task.backbone.features(x)  # our copy of torchvision's layout, conv1 through pool5
        assert torch.equal(task.head.scale1.pooled(task.backbone.forward_features(x)[-1]), expected)
