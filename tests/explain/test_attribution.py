"""``densecnn.explain.attribution`` on a network that only looks at one quadrant of a non-square image (the
top-right one, so a transposed or flipped map fails): saliency, guided backprop, integrated gradients and
Grad-CAM sit in that quadrant; occlusion of the quadrant drops the score, by exactly the drop a direct forward
pass with that window blanked gives; the gradient methods agree with autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from densecnn.errors import ConfigError
from densecnn.explain.attribution import (attribute, attribution_figure, frame_strip_figure, heat_map,
                                          layer_attribution)

H, W = 24, 32  # the quadrant the network sees: rows 0-11, columns 16-31
QUADRANT = (slice(0, H // 2), slice(W // 2, W))


class QuadrantNet(nn.Module):
    """Input masked to the top-right quadrant, two bias-free conv + ReLU layers (in-place ReLUs, as torchvision's
    ResNets have), global average pooling, a linear classifier. Nothing outside the quadrant reaches the logits."""

    def __init__(self, classes: int = 3):
        super().__init__()
        mask = torch.zeros(1, 1, H, W)
        mask[..., QUADRANT[0], QUADRANT[1]] = 1
        self.register_buffer("mask", mask)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():  # positive weights: every unit is alive, so the maps are not empty by chance
            self.conv1.weight.uniform_(0.0, 0.2)
            self.conv2.weight.uniform_(0.0, 0.2)
            self.fc.weight.uniform_(0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.relu2(self.conv2(self.relu1(self.conv1(x * self.mask))))
        return self.fc(features.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net_and_image():
    torch.manual_seed(0)
    net = QuadrantNet().eval()
    image = torch.rand(1, 3, H, W)
    return net, image


def _score(net, cls: int = 1):
    return lambda x: net(x)[:, cls]


def _inside_fraction(heat: torch.Tensor) -> float:
    heat = heat.abs()
    return float(heat[..., QUADRANT[0], QUADRANT[1]].sum() / heat.sum())


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "deconvnet", "integrated_gradients"])
def test_gradient_methods_look_only_at_the_quadrant(net_and_image, method):
    net, image = net_and_image
    attributions = attribute(_score(net), image, method, network=net, steps=8)
    assert attributions.shape == image.shape
    heat = heat_map(attributions, method)[0]
    assert heat.shape == (H, W)
    assert _inside_fraction(heat) == pytest.approx(1.0, abs=1e-6)
    assert float(heat[QUADRANT].min()) > 0  # every pixel of the quadrant matters to a positive-weight net


def test_saliency_is_the_gradient_max_over_channels(net_and_image):
    """The oracle: autograd's gradient of the class logit, |.| and max over colour channels (Simonyan Sec. 3.1)."""
    net, image = net_and_image
    x = image.clone().requires_grad_(True)
    net(x)[0, 1].backward()
    expected = x.grad.abs().amax(dim=1)
    got = heat_map(attribute(_score(net), image, "saliency"), "saliency")
    torch.testing.assert_close(got, expected)
    # the network's ReLUs are still in place after guided backprop turned them off for its hooks
    attribute(_score(net), image, "guided_backprop", network=net)
    assert net.relu1.inplace and net.relu2.inplace


def test_integrated_gradients_complete_the_score(net_and_image):
    """Completeness (Sundararajan et al. Prop. 1): the attributions sum to score(x) - score(baseline)."""
    net, image = net_and_image
    attributions = attribute(_score(net), image, "integrated_gradients", steps=64)
    with torch.no_grad():
        drop = net(image)[0, 1] - net(torch.zeros_like(image))[0, 1]
    assert float(attributions.sum()) == pytest.approx(float(drop), rel=1e-3)


def test_occlusion_drops_the_score_where_the_network_looks(net_and_image):
    net, image = net_and_image
    window, stride = (6, 8), (6, 8)  # a 4 x 4 tiling of the image
    attributions = attribute(_score(net), image, "occlusion", window=window, stride=stride)
    heat = heat_map(attributions, "occlusion")[0]
    # the oracle: blank each window by hand and measure the logit's drop
    with torch.no_grad():
        full = net(image)[0, 1]
        for top in range(0, H, 6):
            for left in range(0, W, 8):
                blanked = image.clone()
                blanked[..., top:top + 6, left:left + 8] = 0
                drop = float(full - net(blanked)[0, 1])
                assert float(heat[top, left]) == pytest.approx(drop, abs=1e-5)
                inside = top < H // 2 and left >= W // 2
                assert (drop > 1e-3) if inside else (abs(drop) < 1e-6)
    row, col = divmod(int(heat.argmax()), W)
    assert row < H // 2 and col >= W // 2


def test_gradcam_highlights_the_quadrant(net_and_image):
    net, image = net_and_image
    cam = attribute(_score(net), image, "gradcam", layer=net.relu2)
    assert cam.shape == (1, 1, H, W)
    heat = heat_map(cam, "gradcam")[0]
    assert float(heat.min()) >= 0
    # the 3x3 convolutions leak two pixels over the quadrant's edge: all but that rim is outside the quadrant
    assert _inside_fraction(heat) > 0.8
    row, col = divmod(int(heat.argmax()), W)
    assert row < H // 2 + 2 and col >= W // 2 - 2
    assert float(heat[H // 2 + 3:, :].abs().max()) == 0 and float(heat[:, : W // 2 - 3].abs().max()) == 0


def test_gradcam_is_selvaraju_eq_2(net_and_image):
    """At the layer's resolution: ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of d score / d A_k."""
    net, image = net_and_image
    store = {}
    handle = net.relu2.register_forward_hook(lambda m, i, o: store.update(a=o))
    x = image.clone()
    logit = net(x)[0, 1]
    grads = torch.autograd.grad(logit, store["a"])[0]
    handle.remove()
    expected = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=1, keepdim=True))
    torch.testing.assert_close(layer_attribution(_score(net), image, net.relu2, "gradcam"), expected.detach())
    per_channel = layer_attribution(_score(net), image, net.relu2, "gradient_x_activation")
    torch.testing.assert_close(per_channel, (grads * store["a"]).detach())


def test_video_occlusion_and_gradcam_cover_space_and_time():
    """A 3-D network that looks only at frames 2-3: the space-time maps are zero on the other frames."""
    torch.manual_seed(0)

    class Frames(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, 1, bias=False)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x[:, :, 2:4])).mean(dim=(1, 2, 3, 4))

    net = Frames()
    with torch.no_grad():
        net.conv.weight.uniform_(0.1, 0.5)
    clip = torch.rand(1, 3, 6, 8, 10)
    saliency = heat_map(attribute(net, clip, "saliency"), "saliency")[0]
    assert saliency.shape == (6, 8, 10)
    assert float(saliency[2:4].min()) > 0 and float(saliency[[0, 1, 4, 5]].abs().max()) == 0
    occlusion = heat_map(attribute(net, clip, "occlusion", window=(1, 8, 10), stride=(1, 8, 10)), "occlusion")[0]
    assert float(occlusion[2:4].min()) > 0 and float(occlusion[[0, 1, 4, 5]].abs().max()) == 0
    frames = [np.zeros((8, 10, 3), np.uint8)] * 6
    fig = frame_strip_figure(frames, saliency, title="saliency", label="|grad|")
    assert len(fig.axes) == 6 + 1  # six frames and one colour bar for the strip


def test_bad_arguments_are_named(net_and_image):
    net, image = net_and_image
    with pytest.raises(ConfigError, match="occlusion window"):
        attribute(_score(net), image, "occlusion", window=(4,))
    with pytest.raises(ConfigError, match="larger than the input"):
        attribute(_score(net), image, "occlusion", window=(40, 8))
    with pytest.raises(ConfigError, match="expected one of"):
        attribute(_score(net), image, "lime")
    with pytest.raises(ValueError, match="one number per input"):
        attribute(net, image, "saliency")  # logits (1, 3), not a score


def test_figure_has_a_colour_bar_per_overlay(net_and_image):
    net, image = net_and_image
    heat = heat_map(attribute(_score(net), image, "saliency"), "saliency")[0]
    picture = (image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    fig = attribution_figure(picture, [heat, heat], ["a", "b"], title="saliency: class 1", label="|grad|",
                             box=(16, 0, 31, 11))
    assert len(fig.axes) == 1 + 2 + 2  # input, two overlays, two colour bars
    assert fig.axes[0].patches  # the box is drawn on the input
