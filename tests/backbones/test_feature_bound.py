"""``forward_features(x, max_index)`` and ``feature_maps(x, indices)`` compute nothing past the deepest map
asked for, and give exactly the maps the full ``forward_features`` gives, for every registered backbone and
timm's feature extractors. The detectors' feature extractor reads its maps that way."""
from __future__ import annotations

import pytest
import torch

from densecnn import create_backbone, list_backbones
from densecnn.backbones.base import StagesUnavailable
from densecnn.errors import UserError
from densecnn.heads.detection import BackboneFeatures, freeze_unused_parameters
from tests.backbones.helpers import fast_backbone
from tests.backbones.test_feature_info import HEAVY, small_input
from tests.backbones.test_stages import TIMM

ALL = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_backbones() + TIMM]


def built(name: str):
    if name.startswith("timm:"):
        torch.manual_seed(0)
        kwargs = {"img_size": 64} if "vit" in name else {}  # a ViT's position embedding fixes its input size
        return create_backbone(name, num_classes=0, **kwargs).eval(), (3, 64, 64)
    size = small_input(name)
    try:  # C3D's fc6 is sized for one input
        return fast_backbone(name, num_classes=0, input_size=size), size
    except TypeError:
        return fast_backbone(name, num_classes=0), size


def stage_modules_or_none(model):
    try:
        return model.stage_modules()
    except StagesUnavailable:  # timm bodies other than FeatureListNet compute every map (documented)
        return None


@pytest.mark.parametrize("name", ALL)
def test_feature_maps_equal_the_full_maps_and_skip_later_stages(name):
    model, size = built(name)
    x = torch.randn(1, *size)
    calls: list[int] = []
    stages = stage_modules_or_none(model)
    hooks = []
    if stages is not None:
        for index, paths in enumerate(stages):
            for path in paths:
                hooks.append(model.get_submodule(path).register_forward_hook(
                    lambda m, i, o, index=index: calls.append(index)))
    with torch.no_grad():
        full = model.forward_features(x)
        assert stages is None or sorted(set(calls)) == list(range(len(full)))
        n = len(full)
        for i in range(n):
            for index in (i, i - n):  # the same map counted from the deepest
                calls.clear()
                (only,) = model.feature_maps(x, [index])
                # (equal_nan: cifar_resnet1202's 600 blocks overflow with the test weights)
                torch.testing.assert_close(only, full[i], rtol=0, atol=0, equal_nan=True)
                bounded = model.forward_features(x, index)
                assert len(bounded) == i + 1
                for a, b in zip(bounded, full):
                    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
                if stages is not None:
                    # stage i ran, no stage after it did
                    assert i in calls and max(calls) == i, (index, sorted(set(calls)))
        # several maps at once, in the order asked
        picked = model.feature_maps(x, [-1, 0])
        torch.testing.assert_close(picked, [full[-1], full[0]], rtol=0, atol=0, equal_nan=True)
        # forward is still the head on the deepest map (GoogLeNet's forward and forward_features differ in code)
        torch.testing.assert_close(model(x), model.forward_head(full[-1]), equal_nan=True)
    for h in hooks:
        h.remove()


def test_out_of_range_indices_are_refused_by_name():
    model = fast_backbone("resnet18", num_classes=0)
    with pytest.raises(UserError, match=r"ResNet has 5 feature maps .* index 5 is not one of them"):
        model.feature_maps(torch.zeros(1, 3, 32, 32), [5])
    with pytest.raises(UserError, match="index -6"):
        model.forward_features(torch.zeros(1, 3, 32, 32), -6)
    with pytest.raises(UserError, match="no feature map index"):
        model.feature_maps(torch.zeros(1, 3, 32, 32), [])
    with pytest.raises(UserError, match="index 7"):  # the detector's extractor no longer wraps 7 round to 2
        BackboneFeatures(model, indices=[7])


def test_detection_features_in_the_c4_layout_do_not_run_conv5_on_the_image():
    model = fast_backbone("resnet18", num_classes=0)
    ran = []
    model.layer4.register_forward_hook(lambda *_: ran.append("layer4"))
    features = BackboneFeatures(model, indices=[-2])  # Faster R-CNN's last_stage box head reads conv4_x
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = features(x)
        assert ran == []  # conv5_x did not run
        full = model.forward_features(x)
    assert ran == ["layer4"]  # (the hook works)
    assert list(out) == ["0"] and torch.equal(out["0"], full[-2])
    # with a pyramid over conv3..conv5 the maps are the same tensors as the full pass's
    fpn = BackboneFeatures(model, indices=[2, 3, 4], fpn=True, fpn_channels=8)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = fpn.fpn({str(k): full[i] for k, i in enumerate([2, 3, 4])})
        got = fpn(x)
    assert list(got) == ["0", "1", "2", "pool"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_freeze_unused_parameters_freezes_exactly_what_follows_the_read_map():
    model = create_backbone("resnet18", num_classes=3)
    unused = freeze_unused_parameters(model, [-2], in_chans=3, size=64)
    expected = {n for n, _ in model.named_parameters() if n.startswith(("layer4.", "fc."))}
    assert set(unused) == expected
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
