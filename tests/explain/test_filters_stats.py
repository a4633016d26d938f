"""Kernel pictures, weight statistics and ResNet Fig. 7's layer response statistics (issue 14), checked
against the weights and a direct forward computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from densecnn import create_backbone
from densecnn.errors import UserError
from densecnn.explain import (
    filter_picture,
    kernel_tiles,
    layer_response_std,
    response_std_picture,
    towers,
    weight_statistics,
)
from densecnn.explain.layer_stats import default_response_layers


@pytest.fixture(scope="module")
def alexnet():
    return create_backbone("alexnet", num_classes=10)


def test_alexnet_conv1_towers_side_by_side(alexnet):
    assert towers(alexnet) == 2 and towers(create_backbone("alexnet_1tower", num_classes=10)) == 1
    weight = alexnet.features[0].weight.detach()
    fig = filter_picture(alexnet)
    # 48 kernels per tower on a 7-column block; tower 2 starts after tower 1's 7 columns and one blank
    tiles = [ax.images[0].get_array() for ax in fig.axes]
    def normalised(k):
        k = k.permute(1, 2, 0).numpy()
        return (k - k.min()) / (k.max() - k.min())
    np.testing.assert_allclose(tiles[0], normalised(weight[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiles[8], normalised(weight[48]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tiles[15 + 1], normalised(weight[8]), rtol=1e-5, atol=1e-6)  # row 2, column 2
    assert np.all(tiles[7] == 1.0)  # the blank column between the towers
    assert len(kernel_tiles(weight)) == 96


def test_deeper_kernels_are_grey_means_over_inputs():
    conv = nn.Conv2d(4, 2, 3)
    tile = kernel_tiles(conv.weight)[1]
    mean = conv.weight[1].detach().mean(0).numpy()
    np.testing.assert_allclose(tile, (mean - mean.min()) / (mean.max() - mean.min()), rtol=1e-5, atol=1e-6)


def test_weight_statistics_values(alexnet):
    stats = {s.layer: s for s in weight_statistics(alexnet)}
    w = alexnet.features[4].weight.detach()
    s = stats["features.4"]
    assert s.shape == (256, 48, 5, 5)  # conv2: 5x5x48 per kernel, S1 L105-120
    torch.testing.assert_close(s.norms, torch.stack([w[i].norm() for i in range(256)]))
    assert s.mean == pytest.approx(w.mean().item()) and s.std == pytest.approx(w.std().item())
    assert list(stats)[-1] == "classifier.6"  # FC8 comes last
    with pytest.raises(UserError, match="no weight"):
        weight_statistics(alexnet, ["features.1"])


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 4, 3)
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))))


def test_layer_response_std_against_a_direct_computation():
    torch.manual_seed(0)
    model = ConvBN()
    for bn in (model.bn1, model.bn3):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    assert default_response_layers(model) == ["bn1", "bn3"]  # after the 3x3 convolutions only
    x = torch.randn(8, 3, 10, 10)
    stds = layer_response_std(model, x)
    model.eval()
    with torch.no_grad():
        b1 = model.bn1(model.conv1(x))
        b3 = model.bn3(model.conv3(torch.relu(model.bn2(model.conv2(torch.relu(b1))))))
    for name, out in (("bn1", b1), ("bn3", b3)):
        direct = np.mean([out[:, c].flatten().std().item() for c in range(out.shape[1])])
        assert stds[name] == pytest.approx(direct, rel=1e-5)


def test_resnet18_has_sixteen_3x3_layers_and_the_plot_shows_the_numbers():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    results = {label: layer_response_std(create_backbone(name, num_classes=10), x)
               for label, name in (("plain-18", "plain_resnet18"), ("ResNet-18", "resnet18"))}
    assert [len(r) for r in results.values()] == [16, 16]  # 8 basic blocks x two 3x3 layers (ResNet Table 1)
    fig = response_std_picture(results)
    top, bottom = fig.axes
    for line, values in zip(top.lines, results.values()):
        np.testing.assert_allclose(line.get_ydata(), list(values.values()))
    for line, values in zip(bottom.lines, results.values()):
        np.testing.assert_allclose(line.get_ydata(), sorted(values.values(), reverse=True))
