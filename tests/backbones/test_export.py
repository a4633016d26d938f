"""Every registered backbone exports: ``torch.export.export`` gives the eager outputs, and the ONNX model
``torch.onnx.export(..., dynamo=True)`` writes gives them too when onnxruntime runs it (to 1e-4).

torch.export is checked for every backbone; the ONNX round trip (a few seconds a model) for one backbone of
every family, the rest behind the ``slow`` marker. TorchScript is not supported (``densecnn.backbones.base``)."""
from __future__ import annotations

import pytest
import torch

from densecnn import list_backbones
from densecnn.backbones import get_entry
from tests.backbones.helpers import fast_backbone, small_residual_branches
from tests.backbones.test_feature_info import HEAVY, small_input

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo ONNX exporter's op library

# one backbone of every family module (the fast ONNX subset): checked to cover them all below
FAMILIES = {"alexnet": "alexnet_torchvision", "allcnn": "allcnn_c", "c3d": "c3d", "googlenet": "googlenet",
            "inflate": "inflated_resnet18", "jarrett": "jarrett", "lenet": "lenet5", "nin": "nin_cifar",
            "resnet": "cifar_resnet20", "vgg": "vgg11_bn", "video_tv": "r2plus1d_18", "zfnet": "zfnet"}
FAST = set(FAMILIES.values())


class LogitsAndMaps(torch.nn.Module):
    """The backbone's logits and every feature map: the test weights zero the huge FC matrices (VGG's fc6),
    which leaves the logits constant, so the maps are compared as well."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone(x), *self.backbone.forward_features(x)


def built(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    size = small_input(name)
    try:  # C3D's fc6 is sized for one input
        model = fast_backbone(name, num_classes=5, input_size=size)
    except TypeError:
        model = fast_backbone(name, num_classes=5)
    return LogitsAndMaps(small_residual_branches(model)).eval(), torch.randn(2, *size, generator=torch.Generator().manual_seed(0))


def assert_outputs_close(got, expected, tol: float) -> None:
    """Each output to ``tol`` relative to its largest value (deep nets with test weights reach 1e4)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        scale = e.abs().max().clamp_min(1.0)
        torch.testing.assert_close(torch.as_tensor(g) / scale, e / scale, rtol=tol, atol=tol)


def test_the_fast_onnx_subset_covers_every_family():
    modules = {get_entry(name).builder.__module__.rsplit(".", 1)[-1] for name in list_backbones()}
    assert modules == set(FAMILIES)
    for module, name in FAMILIES.items():
        assert get_entry(name).builder.__module__.endswith("." + module)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in list_backbones()])
def test_torch_export_gives_the_eager_outputs(name):
    model, x = built(name)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_outputs_close(program.module()(x), model(x), 1e-5)
        # a fresh input of the same shape: the program holds the computation, not the first result
        other = torch.randn_like(x)
        assert_outputs_close(program.module()(other), model(other), 1e-5)


def test_torch_export_of_bounded_feature_maps():
    """What a detector exports: the maps it reads (``feature_maps``), stopping at the deepest of them."""
    model, x = built("resnet18")
    model = model.backbone

    class Maps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = model

        def forward(self, x):
            return tuple(self.backbone.feature_maps(x, [1, -2]))

    program = torch.export.export(Maps(), (x,))
    # layer4's convolutions are not in the graph, only the stem's and layer1..layer3's
    convs = sum(1 for node in program.graph.nodes if node.op == "call_function" and "conv" in str(node.target))
    assert convs == 1 + 4 + 5 + 5  # stem; layer1: 4 convs; layer2/3: 4 + 1 downsample each (of ResNet-18's 21)
    with torch.no_grad():
        full = model.forward_features(x)
        for got, want in zip(program.module()(x), (full[1], full[-2])):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# cifar_resnet1202 is cifar_resnet110's code with 600 blocks (checked by torch.export above): five minutes of
# ONNX export that checks nothing new
@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_backbones() if n != "cifar_resnet1202"])
def test_onnx_through_onnxruntime_gives_the_eager_outputs(name):
    model, x = built(name)
    onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_outputs_close([torch.from_numpy(g) for g in got], model(x), 1e-4)
