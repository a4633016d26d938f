"""Receptive fields, streamed top-k activations and deconvnet projections (issue 14), each against a direct
computation: the seeds' AlexNet table and conv_output_size, gradient support, brute force, a hand-written
deconvnet."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from densecnn import conv_output_size, create_backbone
from densecnn.errors import UserError
from densecnn.explain import (
    deconv_projection,
    receptive_field,
    receptive_fields,
    top_activations,
    zeiler_fergus_figures,
)


class TinyNet(nn.Module):
    """conv-relu-pool-conv-relu: the deconvnet's three operations (rectify, unpool with switches, filter)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))


class LinearBranches(nn.Module):
    """No rectification and positive weights, so a unit's input gradient is non-zero on its whole field; two
    branches of one stride meet in a sum (a residual block's shape)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, stride=1, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.wide = nn.Conv2d(2, 2, 5, stride=2, padding=2)
        self.narrow = nn.Conv2d(2, 2, 1, stride=2)
        self.head = nn.Conv2d(2, 1, 3, dilation=2)
        for p in self.parameters():
            p.data = p.data.abs() + 0.01

    def forward(self, x):
        x = self.pool(self.stem(x))
        return self.head(self.wide(x) + self.narrow(x))


def test_alexnet_receptive_fields_follow_the_layer_table():
    # S2 L556-586: conv1 11/4, pool 3/2, conv2 5 p2, pool 3/2, conv3-5 3 p1, pool 3/2. Field sizes by hand:
    # 11, 11+2*4=19, 19+4*8=51, 51+2*8=67, 67+2*16=99, 131, 163, 163+2*16=195.
    model = create_backbone("alexnet", num_classes=10)
    expected = {"features.0": (11, 4, 0), "features.3": (19, 8, 0), "features.4": (51, 8, -16),
                "features.7": (67, 16, -16), "features.8": (99, 16, -32), "features.10": (131, 16, -48),
                "features.12": (163, 16, -64), "features.14": (195, 32, -64)}
    fields = receptive_fields(model)
    shapes = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: shapes.__setitem__(n, o.shape[-1]))
             for n in expected]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 227, 227))
    for h in hooks:
        h.remove()
    for name, (size, jump, start) in expected.items():
        assert fields[name] == ((size, size), (jump, jump), (start, start)) or \
            (fields[name].size, fields[name].jump, fields[name].start) == ((size,) * 2, (jump,) * 2, (start,) * 2)
        # the whole chain as one window: its unit count is conv_output_size's, and the forward pass's
        assert conv_output_size(227, size, jump, -start) == shapes[name]
    assert shapes["features.12"] == 13 and shapes["features.14"] == 6  # the table's 13x13 and 6x6
    # feature_info indices name the same layers (conv1, conv2, conv5 after ReLU)
    assert receptive_field(model, 2).size == (163, 163)


@pytest.mark.parametrize("unit", [(0, 0), (1, 2), (3, 3)])
def test_box_is_the_gradient_support(unit):
    model = LinearBranches()
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    out = model(x)
    out[(0, 0, *unit)].backward()
    support = (x.grad[0, 0] != 0).nonzero()
    (y0, y1), (x0, x1) = receptive_field(model, "head").box(*unit, input_size=(40, 40))
    assert (support.min(0).values.tolist(), support.max(0).values.tolist()) == ([y0, x0], [y1 - 1, x1 - 1])


def test_box_contains_the_gradient_support_on_resnet18():
    model = create_backbone("resnet18", num_classes=0).eval()
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    maps = model.forward_features(x, 1)
    channel = int(maps[1][0, :, 8, 8].argmax())  # a live unit: a dead ReLU passes no gradient at all
    maps[1][0, channel, 8, 8].backward()
    support = (x.grad[0].abs().sum(0) != 0).nonzero()
    (y0, y1), (x0, x1) = receptive_field(model, 1).box(8, 8, input_size=(96, 96))
    assert (y0, y1, x0, x1) == (11, 54, 11, 54)  # 43 wide, jump 4, start -21: by hand
    assert support[:, 0].min() >= y0 and support[:, 0].max() < y1
    assert support[:, 1].min() >= x0 and support[:, 1].max() < x1


def test_top_activations_are_the_true_maxima():
    torch.manual_seed(0)
    model = TinyNet().eval()
    images = torch.randn(11, 3, 12, 12)
    loader = DataLoader(TensorDataset(images, torch.zeros(11)), batch_size=3)
    top = top_activations(model, loader, ["relu1", "conv2"], k=4, progress=False)
    with torch.no_grad():
        outputs = {"relu1": model.relu1(model.conv1(images)), "conv2": model.conv2(model.pool(
            model.relu1(model.conv1(images))))}
    for name, out in outputs.items():
        per_image = out.flatten(2).amax(2)  # (N, C): each image's strongest unit per channel
        expected = per_image.t().sort(dim=1, descending=True, stable=True)
        t = top[name]
        assert torch.equal(t.values, expected.values[:, :4])
        assert torch.equal(t.image_ids, expected.indices[:, :4])
        for c in range(out.shape[1]):
            for value, image_id, (y, x) in t.entries(c):
                assert out[image_id, c, y, x].item() == value
    # the batch size does not change the answer
    again = top_activations(model, DataLoader(TensorDataset(images), batch_size=11), ["conv2"], k=4, progress=False)
    assert torch.equal(again["conv2"].image_ids, top["conv2"].image_ids)


def hand_deconvnet(model: TinyNet, image: torch.Tensor, channel: int, y: int, x: int) -> torch.Tensor:
    """Zeiler & Fergus Sec. 2.1 written out: rectify the signal, unpool with the forward pass's switches, and
    filter with the transposed kernels, from the unit back to pixels."""
    with torch.no_grad():
        a1 = model.relu1(model.conv1(image[None]))
        pooled, switches = F.max_pool2d(a1, 2, return_indices=True)
        out = model.relu2(model.conv2(pooled))
        signal = torch.zeros_like(out)
        signal[0, channel, y, x] = 1.0
        signal = F.relu(signal)
        signal = F.conv_transpose2d(signal, model.conv2.weight)
        signal = F.max_unpool2d(signal, switches, 2, output_size=a1.shape[-2:])
        signal = F.relu(signal)
        return F.conv_transpose2d(signal, model.conv1.weight, padding=1)[0]


def test_deconv_projection_matches_a_hand_deconvnet_and_stays_in_the_field():
    torch.manual_seed(1)
    model = TinyNet().eval()
    image = torch.randn(3, 16, 16)
    for channel, (y, x) in [(0, (2, 3)), (3, (5, 5)), (4, (0, 0))]:
        projection = deconv_projection(model, "relu2", image, channel, (y, x))
        reference = hand_deconvnet(model, image, channel, y, x)
        torch.testing.assert_close(projection, reference, rtol=1e-5, atol=1e-6)
        (y0, y1), (x0, x1) = receptive_field(model, "relu2").box(y, x, input_size=(16, 16))
        outside = projection.clone()
        outside[:, y0:y1, x0:x1] = 0
        assert projection.abs().sum() > 0 and outside.abs().sum() == 0


def test_zeiler_fergus_figure_labels_the_top_activations(tmp_path):
    torch.manual_seed(2)
    model = TinyNet().eval()
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 12, 12)), batch_size=4)
    paths = zeiler_fergus_figures(model, loader, ["relu2"], tmp_path, k=2, channels=2, progress=False)
    assert [p.name for p in paths] == ["deconv_relu2.png"] and paths[0].stat().st_size > 0
    top = top_activations(model, loader, ["relu2"], k=2, progress=False)["relu2"]
    from densecnn.explain import zeiler_fergus_grid
    from densecnn.explain.topk import gather_images

    images = gather_images(loader, top.image_ids.flatten().tolist(), progress=False)
    fig = zeiler_fergus_grid(model, top, images, channels=2)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels[:4] == [f"act {top.values[0, 0]:.3g}", f"act {top.values[0, 1]:.3g}",
                          f"image {int(top.image_ids[0, 0])}", f"image {int(top.image_ids[0, 1])}"]
    # the patch tile is the receptive-field crop of the image (3x3 conv after 2x2 pool after 3x3 pad 1: 8 wide)
    assert fig.axes[2].images[0].get_array().shape[:2] == tuple(
        hi - lo for lo, hi in receptive_field(model, "relu2").box(*top.positions[0, 0].tolist(), input_size=(12, 12)))


def test_unknown_layer_is_a_user_error():
    with pytest.raises(UserError, match="not a module"):
        receptive_field(TinyNet(), "conv9")
    with pytest.raises(UserError, match="whole input"):
        receptive_field(create_backbone("lenet5"), "f6")  # LeNet-5's F6 is fully connected
