"""Convolution and pooling arithmetic against the seeds' worked examples (SEED_NOTES 2.1, 2.2, 2.4, 7)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densecnn import conv_output_size


@pytest.mark.parametrize("i, k, s, p, expected", [
    (7, 3, 1, 0, 5), (7, 3, 2, 0, 3),      # S2 L16-116: 7x7 input, 3x3 filter at stride 1 and 2
    (7, 3, 3, 0, 2),                       # stride 3: "doesn't fit", floor drops the last column/row
    (7, 3, 1, 1, 7),                       # S2 L160-184: pad 1 keeps 7x7
    (4, 3, 1, 0, 2), (5, 4, 1, 2, 6), (5, 3, 2, 0, 2),  # S4 L58-62 exercises
    (32, 5, 1, 2, 32),                     # S2 L218-283: 32x32x3, 5x5 filters, S=1, P=2
    (227, 11, 4, 0, 55), (55, 3, 2, 0, 27),  # AlexNet conv1 and pool1 (S2 L481-550)
])
def test_conv_output_size_matches_the_seeds(i, k, s, p, expected):
    assert conv_output_size(i, k, s, p) == expected
    # and PyTorch agrees, so the formula is the one the layers use
    assert F.conv2d(torch.zeros(1, 1, i, i), torch.zeros(1, 1, k, k), stride=s, padding=p).shape[-1] == expected


def test_same_padding_is_half_the_kernel_and_dilation_widens_it():
    for k in (1, 3, 5, 7):
        assert conv_output_size(28, k, 1, (k - 1) // 2) == 28
    assert conv_output_size(10, 3, 1, 0, d=2) == 6  # extent d(k-1)+1 = 5
    assert conv_output_size(10, 3, 1, 2, d=2) == F.conv2d(torch.zeros(1, 1, 10, 10), torch.zeros(1, 1, 3, 3),
                                                          padding=2, dilation=2).shape[-1]


def test_224_does_not_give_alexnets_55():
    # SEED_NOTES 9: the paper's 224 input gives (224 - 11) / 4 + 1 = 54.25, floored to 54
    assert conv_output_size(224, 11, 4) == 54


def test_conv_output_size_rejects_bad_arguments():
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(3, 5)
    with pytest.raises(ValueError, match="s, d >= 1"):
        conv_output_size(8, 3, s=0)


def test_parameters_per_layer_are_nf_times_fffd_plus_one():
    conv = torch.nn.Conv2d(3, 10, 5, padding=2)  # S2 L279-283: 10 filters of 5x5x3 -> 760 parameters
    assert sum(p.numel() for p in conv.parameters()) == 10 * (5 * 5 * 3 + 1) == 760


def test_convolution_is_cross_correlation_with_a_flipped_kernel():
    # S0 L318-487: x * k = [[45, 110], [40, 40]]
    x = torch.tensor([[0.0, 80, 40], [20, 40, 0], [0, 0, 40]]).view(1, 1, 3, 3)
    k = torch.tensor([[0.0, 0.25], [0.5, 1]]).view(1, 1, 2, 2)
    expected = torch.tensor([[45.0, 110], [40, 40]])
    assert torch.equal(F.conv2d(x, k.flip(-1, -2))[0, 0], expected)
    assert not torch.equal(F.conv2d(x, k)[0, 0], expected)  # torch's "convolution" is cross-correlation


SIMPLE_CELL_X = torch.tensor([[0.0, 0, 255, 0, 0], [0, 0, 255, 0, 0], [0, 0, 255, 0, 0],
                              [0, 255, 0, 0, 0], [255, 0, 0, 0, 0]]).view(1, 1, 5, 5)
SIMPLE_CELL_W = torch.tensor([[0.0, 0.5], [0.5, 0]]).view(1, 1, 2, 2)


def test_simple_cell_convolution_sigmoid_and_padding_examples():
    z = F.conv2d(SIMPLE_CELL_X, SIMPLE_CELL_W.flip(-1, -2))[0, 0]  # S0 L497-710
    assert torch.equal(z, torch.tensor([[0.0, 127.5, 127.5, 0], [0, 127.5, 127.5, 0], [0, 255, 0, 0],
                                        [255, 0, 0, 0]]))
    h = torch.sigmoid(0.02 * z - 4)
    expected = torch.tensor([[.02, .19, .19, .02], [.02, .19, .19, .02], [.02, .75, .02, .02], [.75, .02, .02, .02]])
    torch.testing.assert_close(h, expected, atol=0.006, rtol=0)
    padded = F.conv2d(SIMPLE_CELL_X, SIMPLE_CELL_W.flip(-1, -2), padding=1)[0, 0]  # S0 L711-769
    assert padded.shape == (6, 6)
    assert torch.equal(padded.round(), torch.tensor([[0.0, 0, 0, 128, 0, 0], [0, 0, 128, 128, 0, 0],
                                                     [0, 0, 128, 128, 0, 0], [0, 0, 255, 0, 0, 0],
                                                     [0, 255, 0, 0, 0, 0], [128, 0, 0, 0, 0, 0]]))


def test_max_pooling_example_and_its_linear_operator():
    h = torch.tensor([[1.0, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]).view(1, 1, 4, 4)  # S2 L352-364
    pooled, index = F.max_pool2d(h, 2, 2, return_indices=True)
    assert torch.equal(pooled[0, 0], torch.tensor([[6.0, 8], [3, 4]]))
    a_max = torch.zeros(4, 16)  # S2 L393-435: vec(H~) = A vec(H), A a 4x16 0/1 matrix
    a_max[torch.arange(4), index.flatten()] = 1
    assert torch.equal(a_max @ h.flatten(), pooled.flatten())
    a_avg = torch.zeros(4, 16)
    for r in range(4):
        i, j = divmod(r, 2)
        for di in range(2):
            for dj in range(2):
                a_avg[r, (2 * i + di) * 4 + 2 * j + dj] = 0.25
    assert torch.equal(a_avg @ h.flatten(), F.avg_pool2d(h, 2).flatten())


def test_complex_cell_pooling_is_locally_translation_invariant():
    # S0 L894-1028: 2x2 max over the sigmoid map, and a shifted input giving the same pooled output
    def cell(x):
        z = F.conv2d(x, SIMPLE_CELL_W.flip(-1, -2))
        return F.max_pool2d(torch.sigmoid(0.02 * z - 4), 2)[0, 0]

    shifted = torch.tensor([[0.0, 0, 255, 0, 0], [0, 0, 0, 0, 0], [0, 255, 255, 0, 0],
                            [255, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).view(1, 1, 5, 5)
    torch.testing.assert_close(cell(SIMPLE_CELL_X), torch.tensor([[.19, .19], [.75, .02]]), atol=0.006, rtol=0)
    torch.testing.assert_close(cell(shifted), cell(SIMPLE_CELL_X))


def test_three_3x3_convs_see_7x7_with_fewer_weights():
    # VGG Section 2.3 (S3 L1110-1132): receptive field 7, 27 C^2 weights vs 49 C^2 (81% more)
    size = 7
    for _ in range(3):
        size = conv_output_size(size, 3)
    assert size == 1
    c = 8
    three = sum(torch.nn.Conv2d(c, c, 3, bias=False).weight.numel() for _ in range(3))
    one = torch.nn.Conv2d(c, c, 7, bias=False).weight.numel()
    assert (three, one) == (27 * c * c, 49 * c * c) and round(one / three - 1, 2) == 0.81


def test_fully_connected_layer_as_a_convolution():
    # S4 L1033-1107: an FC layer on a k x k x D input is a conv with a k x k kernel; 4 inputs -> 2 outputs
    # is two 1x1x4 kernels on a 1x1 "image" with 4 channels
    torch.manual_seed(0)
    fc = torch.nn.Linear(4, 2)
    conv = torch.nn.Conv2d(4, 2, 1)
    conv.weight.data.copy_(fc.weight.view(2, 4, 1, 1))
    conv.bias.data.copy_(fc.bias)
    x = torch.randn(3, 4)
    torch.testing.assert_close(conv(x.view(3, 4, 1, 1)).flatten(1), fc(x))
    fc6 = torch.nn.Linear(8 * 3 * 3, 5)  # on a 3x3x8 map: a 3x3 conv, and it slides over bigger maps
    conv6 = torch.nn.Conv2d(8, 5, 3)
    conv6.weight.data.copy_(fc6.weight.view(5, 8, 3, 3))
    conv6.bias.data.copy_(fc6.bias)
    maps = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(conv6(maps).flatten(1), fc6(maps.flatten(1)))
    assert conv6(torch.randn(1, 8, 7, 7)).shape == (1, 5, 5, 5)
