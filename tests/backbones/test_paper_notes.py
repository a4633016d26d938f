"""The simplifications the module docstrings state against the papers are what the code does: BN-Inception's
608/1056-wide modules (Fig. 5's columns, not its output-size column), C3D's paper names, LeNet-5's
parameter-free subsampling and plain tanh, Jarrett's filter-bank bias."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from densecnn import create_backbone
from densecnn.backbones import c3d, googlenet, jarrett, lenet
from densecnn.backbones.googlenet import BN_INCEPTION


def test_bn_inception_widths_are_the_sums_of_figure_5s_columns():
    model = create_backbone("bn_inception", num_classes=0)
    # (#1x1, #3x3 reduce, #3x3, double reduce, double #3x3, pool, pool proj, stride): a stride-2 module has no
    # 1x1 branch and passes its input through the pool branch
    previous = 192
    for name, (c1, _, c3, _, dbl, _, proj, stride) in BN_INCEPTION.items():
        expected = c1 + c3 + dbl + (proj if proj else previous)
        assert getattr(model, f"inception{name}").out_channels == expected, name
        previous = expected
    widths = {k: getattr(model, f"inception{k}").out_channels for k in ("4a", "4b", "4c", "4d", "4e", "5a")}
    # the docstring's numbers: 4c/4d 608 and 4e 1056 where Fig. 5's output column says 576 and 1024
    assert widths == {"4a": 576, "4b": 576, "4c": 608, "4d": 608, "4e": 1056, "5a": 1024}
    assert 160 + 160 + 160 + 128 == 96 + 192 + 192 + 128 == 608 and 192 + 256 + 608 == 1056
    assert model.feature_info[3].num_chs == 608
    with torch.no_grad():
        maps = model.eval().forward_features(torch.randn(1, 3, 64, 64))
    assert maps[3].shape[1] == 608
    assert "608" in googlenet.__doc__ and "1056" in googlenet.__doc__ and "576" in googlenet.__doc__


def test_c3d_modules_are_named_as_in_the_paper():
    model = create_backbone("c3d", num_classes=5, width_mult=0.125, input_size=(3, 8, 28, 28))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.MaxPool3d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert convs == ["stage1.conv1a", "stage2.conv2a", "stage3.conv3a", "stage3.conv3b", "stage4.conv4a",
                     "stage4.conv4b", "stage5.conv5a", "stage5.conv5b"]
    assert pools == [f"stage{k}.pool{k}" for k in range(1, 6)]
    assert linears == ["fc6", "fc7", "fc8"]
    bn = create_backbone("c3d", width_mult=0.125, input_size=(3, 8, 28, 28), batch_norm=True)
    assert [n for n, m in bn.named_modules() if isinstance(m, nn.BatchNorm3d)][:3] == [
        "stage1.bn1a", "stage2.bn2a", "stage3.bn3a"]
    # the named layers are the ones that run: stage 3 is conv3a -> relu -> conv3b -> relu -> pool3
    s = model.stage3
    x = torch.randn(1, s.conv3a.in_channels, 4, 7, 7)
    expected = s.pool3(F.relu(s.conv3b(F.relu(s.conv3a(x)))))
    torch.testing.assert_close(s(x), expected)
    assert "conv3b" in c3d.C3D.__doc__


def test_lenet5_subsamples_without_parameters_and_squashes_with_plain_tanh():
    torch.manual_seed(0)
    model = create_backbone("lenet5").eval()
    assert list(model.s2.parameters()) == [] and list(model.s4.parameters()) == []
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        s2 = model.forward_features(x)[0]
        a = F.avg_pool2d(model.c1(x), 2)  # the bare 2x2 average, no coefficient, no bias
        torch.testing.assert_close(s2, torch.tanh(a))
        assert not torch.allclose(s2, 1.7159 * torch.tanh(2 * a / 3), atol=1e-3)  # not LeCun's scaled tanh
    assert "1.7159" in lenet.__doc__


def test_jarrett_filter_bank_has_a_bias_the_paper_does_not():
    torch.manual_seed(0)
    model = create_backbone("jarrett")
    bank = model.stage1[0]
    assert bank.conv.bias is not None and bank.conv.bias.shape == (64,) and model.stage2[0].conv.bias.shape == (256,)
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        bank.gain.uniform_(0.5, 2.0)
        bank.conv.bias.uniform_(-1, 1)
        expected = bank.gain.view(1, -1, 1, 1) * torch.tanh(F.conv2d(x, bank.conv.weight, bank.conv.bias))
        torch.testing.assert_close(bank(x), expected)
    # the paper's filter banks alone: 64x1x9x9 + 256x64x9x9 kernels and one gain per map; the biases add 320
    paper = 64 * 81 + 64 + 256 * 64 * 81 + 256
    body = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("stage1", "stage2")))
    assert body == paper + 64 + 256
    assert "bias" in jarrett.__doc__
