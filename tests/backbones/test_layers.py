"""Paper layers in densecnn.layers, and AlexNet's LRN constants."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from densecnn.backbones.alexnet import paper_lrn
from densecnn.layers import (DropConnectLinear, LocalContrastNorm, Maxout, StochasticPool2d, gaussian_window,
                             init_gaussian, init_he, init_xavier)


# ---- stochastic pooling ------------------------------------------------------------------------------------
def _region():
    # one 2x2 region holding 1.6 and 2.4 (S3 L3746-3792): p = 0.4 and 0.6
    return torch.tensor([[[[1.6, 0.0], [2.4, 0.0]]]])


def test_stochastic_pooling_probabilities_are_the_seeds_example():
    _, probs, _ = StochasticPool2d(2).probabilities(_region())
    torch.testing.assert_close(probs.flatten(), torch.tensor([0.4, 0.0, 0.6, 0.0]))


def test_stochastic_pooling_test_time_is_probability_weighted():
    pool = StochasticPool2d(2).eval()
    torch.testing.assert_close(pool(_region()).flatten(), torch.tensor([0.4 * 1.6 + 0.6 * 2.4]))


def test_stochastic_pooling_samples_with_those_probabilities():
    torch.manual_seed(0)
    pool = StochasticPool2d(2).train()
    x = _region().expand(4000, 1, 2, 2).contiguous()
    out = pool(x).flatten()
    assert ((out - 1.6).abs() < 1e-6).logical_or((out - 2.4).abs() < 1e-6).all()
    assert abs((out > 2).float().mean().item() - 0.6) < 0.03


def test_stochastic_pooling_shapes_zeros_and_gradient():
    pool = StochasticPool2d(3, stride=2)
    x = torch.relu(torch.randn(2, 4, 13, 13)).requires_grad_()
    out = pool(x)
    assert out.shape == nn.MaxPool2d(3, 2)(x).shape == (2, 4, 6, 6)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # every sampled value is one of its window's activations, so it never exceeds the max
    assert (out <= nn.MaxPool2d(3, 2)(x) + 1e-6).all()
    assert pool(torch.zeros(1, 1, 5, 5)).abs().sum() == 0 and pool.eval()(torch.zeros(1, 1, 5, 5)).abs().sum() == 0


# ---- local contrast normalization ---------------------------------------------------------------------------
def test_gaussian_window_is_normalised():
    w = gaussian_window(9)
    assert w.shape == (9, 9) and abs(float(w.sum()) - 1) < 1e-6 and w[4, 4] == w.max()
    with pytest.raises(ValueError, match="odd"):
        gaussian_window(4)


def test_lcn_removes_local_mean_and_scales_by_local_deviation():
    torch.manual_seed(0)
    lcn = LocalContrastNorm(4)
    x = torch.randn(2, 4, 24, 24) * 5 + 3
    y = lcn(x)
    assert y.shape == x.shape
    # invariant to brightness (added constant) and contrast (scale), which is what it is for
    torch.testing.assert_close(lcn(x + 10), y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lcn(3 * x), y, atol=1e-4, rtol=1e-4)
    # one interior site by the paper's sums: v = x - sum_ipq w_pq x, w a 9x9 Gaussian summing to 1 over (i, p, q)
    w = gaussian_window(9) / 4
    j, k = 12, 10
    patch = x[0, :, j - 4:j + 5, k - 4:k + 5]
    mean = (w * patch).sum()
    v_site = x[0, :, j, k] - mean
    v = x - lcn._local_mean(x)
    torch.testing.assert_close(v[0, :, j, k], v_site)
    sigma = (w * v[0, :, j - 4:j + 5, k - 4:k + 5] ** 2).sum().sqrt()
    c = lcn._local_mean(v * v).sqrt()[0].mean()
    torch.testing.assert_close(y[0, :, j, k], v_site / torch.maximum(sigma, c), atol=1e-5, rtol=1e-5)
    assert lcn(torch.full((1, 4, 10, 10), 7.0)).abs().max() < 1e-3  # a constant image has no contrast
    with pytest.raises(ValueError, match=r"expects \(N, 4, H, W\)"):
        lcn(torch.randn(1, 3, 10, 10))


def test_lcn_divisor_is_at_least_the_mean_deviation():
    # y = v / max(c, sigma): where sigma < c (flat regions) the output is v / c, i.e. not amplified
    lcn = LocalContrastNorm(1, size=3)
    x = torch.zeros(1, 1, 12, 12)
    x[..., 6, 6] = 1.0
    v = x - lcn._local_mean(x)
    sigma = lcn._local_mean(v * v).sqrt()
    torch.testing.assert_close(lcn(x), v / torch.maximum(sigma, sigma.mean()))


# ---- DropConnect, maxout ------------------------------------------------------------------------------------
def test_dropconnect_masks_weights_in_training_only():
    torch.manual_seed(0)
    layer = DropConnectLinear(50, 40, p=0.5)
    x = torch.randn(8, 50)
    layer.eval()
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)
    # expectation preserved: averaging many masked outputs approaches W x + b
    mean = torch.stack([layer(x) for _ in range(400)]).mean(0)
    assert (mean - nn.functional.linear(x, layer.weight, layer.bias)).abs().mean() < 0.05
    per_sample = DropConnectLinear(6, 3, p=0.5, per_sample=True).train()
    rows = per_sample(torch.ones(2, 6).repeat(50, 1))
    assert rows.shape == (100, 3) and rows.unique(dim=0).shape[0] > 2  # different masks per example
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropConnectLinear(2, 2, p=1.0)


def test_maxout_takes_the_max_over_groups():
    x = torch.tensor([1.0, 5, 2, -1, -3, 0]).view(1, 6, 1, 1)
    assert Maxout(2)(x).flatten().tolist() == [5.0, 2.0, 0.0]
    assert Maxout(3)(x).flatten().tolist() == [5.0, 0.0]
    with pytest.raises(ValueError, match="not a multiple"):
        Maxout(4)(x)


# ---- initialisation ------------------------------------------------------------------------------------------
def test_init_helpers_set_the_papers_distributions():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 256, 3), nn.Linear(512, 512))
    init_gaussian(net, std=0.01, bias=1.0)
    assert abs(net[0].weight.std().item() - 0.01) < 1e-3 and (net[1].bias == 1).all()
    init_he(net, mode="fan_in")
    assert abs(net[0].weight.std().item() - (2 / (64 * 9)) ** 0.5) < 3e-3 and (net[0].bias == 0).all()
    init_xavier(net)
    bound = (6 / (512 + 512)) ** 0.5
    assert net[1].weight.abs().max() <= bound and net[1].weight.abs().max() > 0.9 * bound


def test_paper_lrn_is_the_formula_of_section_3_3():
    torch.manual_seed(0)
    a = torch.rand(2, 12, 3, 3) * 10
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = torch.empty_like(a)
    for i in range(12):
        lo, hi = max(0, i - n // 2), min(11, i + n // 2)
        expected[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(1)) ** beta
    torch.testing.assert_close(paper_lrn()(a), expected)
