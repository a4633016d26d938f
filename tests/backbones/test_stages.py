"""Stage membership is declared (``stage_modules`` / ``stage_parameters``, one stage per ``feature_info``
map): ``trainable_stages`` trains exactly the declared last stages, the declaration is checked against what
autograd says each map depends on, and Faster R-CNN's ``last_stage`` box head is the real last stage."""
from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn

from densecnn import create_backbone, list_backbones
from densecnn.backbones.base import StagesUnavailable
from densecnn.backbones.inflate import FrameAveraged
from densecnn.heads.detection import set_trainable_stages
from tests.backbones.helpers import fast_backbone
from tests.backbones.test_feature_info import HEAVY, small_input

# timm models through each of timm's feature extractors that declares stages: FeatureListNet (resnet,
# convnext), its own EfficientNet/MobileNet feature classes and FeatureGetterNet (ViT); FeatureHookNet
# models refuse (test_timm_hook_models_refuse_trainable_stages)
TIMM = ["timm:resnet18", "timm:convnext_atto", "timm:efficientnet_b0", "timm:mobilenetv3_small_050",
        "timm:vit_tiny_patch16_224"]
ALL = list_backbones() + TIMM


def meta_backbone(name: str) -> nn.Module:
    """Membership needs names and shapes only: build on the meta device (no memory, no initialisers), so
    every backbone, ResNet-152 and cifar_resnet1202 included, is checked at its real size."""
    with torch.device("meta"):
        return create_backbone(name, num_classes=0)


def names_of(stage) -> list[str]:
    return [name for name, _ in stage]


def numel(stage) -> int:
    return sum(p.numel() for _, p in stage)


@pytest.mark.parametrize("name", ALL)
def test_stages_are_declared_disjoint_ordered_and_nonempty(name):
    model = meta_backbone(name)
    stages = model.stage_parameters()
    order = [n for n, _ in model.named_parameters()]
    assert len(stages) == len(model.feature_info)
    declared = [n for stage in stages for n in names_of(stage)]
    assert len(declared) == len(set(declared)), "a parameter is declared in two stages"
    assert set(declared) <= set(order), "declared names must be named_parameters names"
    for index, stage in enumerate(stages):
        assert numel(stage) > 0, f"stage {index} of {name} has no parameters"
    # shallow to deep in registration order: stage i's parameters all come before stage i+1's
    position = {n: i for i, n in enumerate(order)}
    positions = [[position[n] for n in names_of(stage)] for stage in stages]
    for earlier, later in pairwise(positions):
        assert max(earlier) < min(later)
    # the tensors are the model's own (not copies): freezing them freezes the model
    params = dict(model.named_parameters())
    assert all(p is params[n] for stage in stages for n, p in stage)


@pytest.mark.parametrize("name", ALL)
def test_trainable_stages_trains_exactly_the_last_k_declared_stages(name):
    model = meta_backbone(name)
    stages = [names_of(stage) for stage in model.stage_parameters()]
    head = {n for n, _ in model.named_parameters()} - {n for stage in stages for n in stage}
    n = len(stages)
    for k in range(n + 1):
        for p in model.parameters():  # a fresh start for each k, as a freshly built backbone
            p.requires_grad_(True)
        set_trainable_stages(model, k)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        expected = {p for stage in stages[n - k:] for p in stage}
        frozen = {p for stage in stages[:n - k] for p in stage}
        # the last k stages train, the first n - k are frozen, and what follows the last map (a head such as
        # VGG's fc6/fc7) is not a stage and keeps its state
        assert trainable == expected | head
        assert not frozen & trainable
        if k >= 1:
            assert sum(p.numel() for name, p in model.named_parameters() if name in expected) > 0
    with pytest.raises(ValueError, match="trainable_stages must be between 0 and"):
        set_trainable_stages(model, n + 1)


def test_timm_hook_models_refuse_trainable_stages():
    """Xception taps block 0 before its shortcut is added, and registers the shortcut first: no stage rule
    from timm's declarations gets that right, so trainable_stages says so instead of freezing it wrongly."""
    model = meta_backbone("timm:xception41")
    with pytest.raises(ValueError, match=r"timm:xception41 taps its feature maps inside blocks.*trainable_stages: null"):
        set_trainable_stages(model, 2)
    set_trainable_stages(model, None)  # training everything needs no stages


def trainable_stage_params(name: str, k: int) -> dict[str, int]:
    model = meta_backbone(name)
    set_trainable_stages(model, k)
    in_stages = {n for stage in model.stage_parameters() for n in names_of(stage)}
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad and n in in_stages}


def test_last_stage_by_name_independent_of_the_declaration():
    """Oracles from the architectures' tables, not from stage_modules."""
    conv5 = trainable_stage_params("vgg16", 1)  # conv5_1..conv5_3 are features.24/26/28
    assert sorted(conv5) == sorted(f"features.{i}.{w}" for i in (24, 26, 28) for w in ("weight", "bias"))
    assert sum(conv5.values()) == 3 * (512 * 512 * 9 + 512) == 7_079_424
    conv3 = (128 * 256 * 9 + 256) + 2 * (256 * 256 * 9 + 256)  # conv3_1..conv3_3
    conv4 = (256 * 512 * 9 + 512) + 2 * (512 * 512 * 9 + 512)
    assert sum(trainable_stage_params("vgg16", 3).values()) == conv3 + conv4 + 7_079_424
    resnet = meta_backbone("resnet50")
    assert set(trainable_stage_params("resnet50", 1)) == {n for n, _ in resnet.named_parameters()
                                                           if n.startswith("layer4.")}
    assert set(trainable_stage_params("resnet50", 3)) == {n for n, _ in resnet.named_parameters()
                                                           if n.startswith(("layer2.", "layer3.", "layer4."))}
    # the stem is stage 0: trainable_stages = all stages trains conv1 too
    assert "conv1.weight" in trainable_stage_params("resnet50", 5)
    # AlexNet/ZF-Net's last stage is conv3-conv5 (features.8/10/12), NiN's the fourth mlpconv's two convs
    for name in ("alexnet", "zfnet"):
        assert {n.rsplit(".", 1)[0] for n in trainable_stage_params(name, 1)} == {"features.8", "features.10",
                                                                                 "features.12"}
    # conv3 sees both towers; conv4 and conv5 are two towers (groups=2: each kernel sees half the maps)
    conv3, conv4, conv5 = 256 * 384 * 9 + 384, 192 * 384 * 9 + 384, 192 * 256 * 9 + 256
    assert sum(trainable_stage_params("alexnet", 1).values()) == conv3 + conv4 + conv5 == 1_991_680
    assert {n.rsplit(".", 1)[0] for n in trainable_stage_params("nin", 1)} == {"features.22", "features.24"}
    # GoogLeNet's last stage is inception 5a and 5b (Table 1), its second-to-last 4a-4e
    modules = {n.split(".")[0] for n in trainable_stage_params("googlenet", 2)}
    assert modules == {"inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
                       "inception5a", "inception5b"}
    timm_resnet = trainable_stage_params("timm:resnet18", 1)
    assert timm_resnet and all(n.startswith("body.layer4.") for n in timm_resnet)
    assert "body.conv1.weight" in trainable_stage_params("timm:resnet18", 5)


def test_classifier_heads_belong_to_no_stage():
    """GoogLeNet's auxiliary classifiers and the FC layers are heads: not in any stage."""
    with torch.device("meta"):
        model = create_backbone("googlenet", num_classes=10)
    declared = {n for stage in model.stage_parameters() for n in names_of(stage)}
    rest = {n.split(".")[0] for n, _ in model.named_parameters() if n not in declared}
    assert rest == {"aux1", "aux2", "fc"}


def test_frame_averaged_stages_are_its_models():
    with torch.device("meta"):
        inner = create_backbone("resnet18", num_classes=0)
        model = FrameAveraged(inner)
    assert [names_of(s) for s in model.stage_parameters()] == [["model." + n for n in names_of(s)]
                                                                for s in inner.stage_parameters()]


def reached_parameters(output: torch.Tensor, params: dict[int, str]) -> set[str]:
    """Names of the parameters ``output`` depends on, read off its autograd graph (no backward pass)."""
    reached, seen, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None and id(variable) in params:
            reached.add(params[id(variable)])
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return reached


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL])
def test_declaration_matches_what_each_map_depends_on(name):
    """The independent oracle: map i depends on exactly the parameters of stages 0..i, and running the
    declared stage i on map i-1 gives map i (the module Faster R-CNN's last_stage head runs)."""
    size = (3, 64, 64) if name.startswith("timm:") else small_input(name)
    if name == "timm:vit_tiny_patch16_224":
        size = (3, 224, 224)  # timm's ViT checks the image size it was built for
    # C3D sizes its fc6 for the clip it is told; the others take no input size
    # in float64: the random weights of cifar_resnet1202's 600 residual blocks overflow float32
    model = fast_backbone(name, num_classes=0, **({"input_size": size} if name == "c3d" else {})).double()
    stages = [names_of(stage) for stage in model.stage_parameters()]
    params = {id(p): n for n, p in model.named_parameters()}
    x = torch.randn(1, *size, dtype=torch.float64)
    maps = model.forward_features(x)
    for index, feature in enumerate(maps):
        assert reached_parameters(feature, params) == {n for stage in stages[:index + 1] for n in stage}, index
    try:
        model.stage_modules()
    except StagesUnavailable:  # timm's hook/getter extractors: membership only, no chain (box head: mlp)
        assert name.startswith("timm:") and type(model.body).__name__ != "FeatureListNet"
        return
    with torch.no_grad():
        inputs = [x] + [m.detach().clone() for m in maps[:-1]]
        for index, (inp, feature) in enumerate(zip(inputs, maps)):
            torch.testing.assert_close(model.stage_module(index)(inp), feature.detach())


def test_faster_rcnn_last_stage_head_is_the_real_last_stage():
    from tasks import FasterRCNNTask

    task = FasterRCNNTask(backbone="alexnet", num_classes=2, trainable_stages=1, anchor_sizes=[32, 64],
                          rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, box_batch_size_per_image=8)
    stage = task.detector.roi_heads.box_head.stage
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    # conv3-conv5 of the backbone itself (shared, not copies), after the pool that follows conv2
    assert convs == [task.backbone.features[i] for i in (8, 10, 12)]
    assert sum(p.numel() for p in stage.parameters()) == 1_991_680
    trainable = {n for n, p in task.backbone.named_parameters() if p.requires_grad}
    assert trainable == {f"features.{i}.{w}" for i in (8, 10, 12) for w in ("weight", "bias")}
    batch = {"image": torch.randn(1, 3, 127, 127),
             "target": [{"boxes": torch.tensor([[10., 10, 90, 100]]), "labels": torch.tensor([1])}]}
    sum(task.training_losses(batch).values()).backward()
    assert all(task.backbone.features[i].weight.grad is not None for i in (8, 10, 12))
    assert task.backbone.features[4].weight.grad is None  # conv2 is frozen

    googlenet = FasterRCNNTask(backbone="googlenet", num_classes=2, anchor_sizes=[32, 64])
    body = googlenet.backbone
    assert list(googlenet.detector.roi_heads.box_head.stage) == [body.maxpool4, body.inception5a, body.inception5b]


def test_faster_rcnn_last_stage_without_a_chain_names_the_alternative():
    from tasks import FasterRCNNTask

    with pytest.raises(ValueError, match=r"timm:vit_tiny_patch16_224.*box_head: mlp or fpn: true"):
        FasterRCNNTask(backbone="timm:vit_tiny_patch16_224", num_classes=2, anchor_sizes=[32, 64],
                       box_head="last_stage")
