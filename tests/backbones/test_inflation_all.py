"""I3D inflation (Carreira & Zisserman 2017, Section 2.4) reaches every registered 2D family: on a clip of T
identical frames the inflated network gives, at every feature map and at the logits, the 2D network's
output on that frame (the "boring-video" fixed point). A layer with no 3D counterpart is refused by name."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from densecnn import create_backbone, list_backbones
from densecnn.backbones import get_entry
from densecnn.backbones.inflate import PerFrame, inflate
from tests.backbones.helpers import fast_backbone, small_residual_branches
from tests.backbones.test_feature_info import small_input

TWO_D = [n for n in list_backbones() if len(get_entry(n).input_size) == 3]
SLOW = {"cifar_resnet1202", "resnet101", "resnet152"}
# BN-Inception's 5b max-pool (3x3, padding 1) meets a 2x2 map at 64x64: max_pool2d accepts it, max_pool3d
# does not, so the inflated net is checked one size up
SIZE = {"bn_inception": 96}


def with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, so the fixed point checks them too."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.2, 0.2, generator=generator)
    return small_residual_branches(model, generator)


def assert_fixed_point(model2d: nn.Module, model3d: nn.Module, image: torch.Tensor, frames: int = 3) -> None:
    clip = image.unsqueeze(2).repeat(1, 1, frames, 1, 1)
    with torch.no_grad():
        maps2d, maps3d = model2d.forward_features(image), model3d.forward_features(clip)
        assert len(maps3d) == len(maps2d)
        for f2, f3 in zip(maps2d, maps3d):
            assert f3.shape == (f2.shape[0], f2.shape[1], frames, *f2.shape[2:])
            scale = f2.abs().max().clamp_min(1e-6)
            torch.testing.assert_close(f3 / scale, (f2 / scale).unsqueeze(2).expand_as(f3), rtol=1e-4, atol=1e-4)
        logits2d, logits3d = model2d(image), model3d(clip)
        scale = logits2d.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(logits3d / scale, logits2d / scale, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TWO_D])
def test_every_2d_family_inflates_to_the_constant_clip_fixed_point(name):
    model2d = with_batchnorm_statistics(fast_backbone(name, num_classes=5))
    model3d = inflate(copy.deepcopy(model2d)).eval()
    assert type(model3d).__name__ == f"Inflated{type(model2d).__name__}"
    # no 2D convolution, batch norm or pool is left, except inside layers that run per frame
    per_frame = {path for path, m in model3d.named_modules() if isinstance(m, PerFrame)}
    for path, m in model3d.named_modules():
        if not any(path == p or path.startswith(p + ".") for p in per_frame):
            assert not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)), path
    assert model3d.feature_info == model2d.feature_info
    side = SIZE.get(name)
    size = small_input(name) if side is None else (3, side, side)
    assert_fixed_point(model2d, model3d, torch.randn(2, *size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["googlenet", "jarrett"])
def test_2d_checkpoints_of_googlenet_and_jarrett_load_into_the_inflated_network(name, tmp_path):
    """Through the registry (``create_backbone("inflated", base=...)``) with the 2D state_dict: kernels are
    inflated as they load; the per-frame layers (Jarrett's gains, GoogLeNet's aux heads) keep theirs."""
    torch.manual_seed(0)
    model2d = create_backbone(name, num_classes=4).eval()
    path = tmp_path / "2d.pth"
    torch.save(model2d.state_dict(), path)
    model3d = create_backbone("inflated", base=name, num_classes=4, weights=str(path)).eval()
    assert_fixed_point(model2d, model3d, torch.randn(1, *small_input(name)), frames=2)
    if name == "googlenet":
        assert model3d.conv1.conv.weight.shape == (64, 3, 7, 7, 7)
        assert model3d.aux1.conv.conv.weight.dim() == 4 and isinstance(model3d.aux1, PerFrame)
        # in training the aux classifiers see the clip too: per-frame logits averaged over time
        model2d.train(), model3d.train()
        image = torch.randn(2, 3, 64, 64)
        for m in (model2d, model3d):
            for d in m.modules():
                if isinstance(d, nn.Dropout):
                    d.p = 0.0
        with torch.no_grad():
            logits2d, aux2d = model2d.forward_with_aux(image)
            logits3d, aux3d = model3d.forward_with_aux(image.unsqueeze(2).repeat(1, 1, 2, 1, 1))
        # batch norm-free paper GoogLeNet: training mode differs only by dropout (off) and the aux heads
        assert len(aux2d) == len(aux3d) == 2
        for a, b in zip([logits2d, *aux2d], [logits3d, *aux3d]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_a_2d_layer_without_a_3d_counterpart_is_refused_with_family_and_path():
    class Upsampler(nn.Module):  # a custom block holding a layer inflation does not know
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)

    model = create_backbone("resnet18", num_classes=3)
    model.layer1[0].extra = Upsampler()
    with pytest.raises(ValueError, match=r"inflate: ResNet cannot be inflated: layer1\.0\.extra\.up: "
                                         r"ConvTranspose2d .* 2D layer with no 3D counterpart"):
        inflate(model)
    with pytest.raises(ValueError, match=r"inflated base='c3d'|not a 2D image backbone"):
        create_backbone("inflated", base="c3d")
