"""C3D against Tran et al.'s configuration, torchvision's video ResNets, 2D->3D inflation (I3D)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from densecnn import create_backbone, list_backbones
from densecnn.backbones.c3d import C3D_WIDTHS
from densecnn.backbones.inflate import FrameAveraged, inflate, inflate_kernel
from densecnn.weights import WeightsError


def c3d_parameter_count(num_classes: int) -> int:
    """The paper's configuration counted by hand: 8 3x3x3 convolutions (with biases), pool5 = 512x1x4x4 into
    fc6 (4096), fc7 (4096) and the classifier."""
    widths = (3, *C3D_WIDTHS)
    convs = sum(cin * cout * 27 + cout for cin, cout in zip(widths[:-1], widths[1:]))
    fcs = (512 * 1 * 4 * 4 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)
    return convs + fcs


@pytest.mark.parametrize("num_classes, expected", [(487, 79_991_015), (101, 78_409_573)])
def test_c3d_parameters_match_the_paper_configuration(num_classes, expected):
    with torch.device("meta"):
        model = create_backbone("c3d", num_classes=num_classes)
    assert c3d_parameter_count(num_classes) == expected
    assert sum(p.numel() for p in model.parameters()) == expected


def test_c3d_layers_are_the_papers():
    with torch.device("meta"):
        model = create_backbone("c3d")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool3d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 8 and len(pools) == 5 and len(linears) == 3  # 8 conv, 5 pool, 2 fc + classifier
    assert all(c.kernel_size == (3, 3, 3) and c.stride == (1, 1, 1) and c.padding == (1, 1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert pools[0].kernel_size == (1, 2, 2) and all(p.kernel_size == (2, 2, 2) for p in pools[1:])
    assert [l.out_features for l in linears] == [4096, 4096, 487]
    assert model.fc6.in_features == 8192  # pool5: 512 x 1 x 4 x 4


def test_c3d_feature_maps_and_logits_for_a_16x112x112_clip():
    model = create_backbone("c3d", num_classes=101).to("meta")
    clip = torch.empty(2, 3, 16, 112, 112, device="meta")
    shapes = [tuple(f.shape) for f in model.forward_features(clip)]
    assert shapes == [(2, 64, 16, 56, 56), (2, 128, 8, 28, 28), (2, 256, 4, 14, 14), (2, 512, 2, 7, 7),
                      (2, 512, 1, 4, 4)]
    assert [i.reduction for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert model.feature_channels() == [64, 128, 256, 512, 512]
    assert tuple(model(clip).shape) == (2, 101)
    assert tuple(model.embed(clip).shape) == (2, 4096)


def test_reduced_c3d_runs_on_cpu_and_gives_fc6_features():
    model = create_backbone("c3d", num_classes=6, width_mult=0.125, input_size=(3, 8, 28, 28)).eval()
    clip = torch.randn(2, 3, 8, 28, 28)
    assert model.feature_channels() == [8, 16, 32, 64, 64]
    assert model(clip).shape == (2, 6)
    fc6 = model.embed(clip, "fc6")
    assert fc6.shape == (2, 512) and (fc6 >= 0).all()  # after ReLU
    assert create_backbone("c3d", num_classes=0, width_mult=0.125, input_size=(3, 8, 28, 28))(clip).shape == (2, 512)


def test_c3d_rejects_clips_of_another_size_and_images():
    model = create_backbone("c3d", width_mult=0.125, input_size=(3, 8, 28, 28))
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(1, 3, 8, 56, 56))
    with pytest.raises(ValueError, match=r"\(N, C, T, H, W\)"):
        model(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_weights_load_unchanged(name, tmp_path):
    torch.manual_seed(0)
    reference = getattr(torchvision.models.video, name)(num_classes=400).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_backbone(name, weights=str(path)).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    clip = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), reference(clip))
        features = ours.forward_features(clip)
    assert [f.shape[1] for f in features] == ours.feature_channels()
    assert [16 // f.shape[-1] for f in features] == ours.feature_reductions()


def test_torchvision_video_weights_for_other_classes_drop_the_classifier(tmp_path):
    path = tmp_path / "r3d.pth"
    torch.save(torchvision.models.video.r3d_18(num_classes=400).state_dict(), path)
    with pytest.warns(UserWarning, match="fc.weight"):
        model = create_backbone("r3d_18", weights=str(path), num_classes=7)
    assert model.fc.out_features == 7
    with pytest.raises(WeightsError, match="mc3_18|keys do not match|shapes"):
        create_backbone("r2plus1d_18", weights=str(path))


def test_inflated_kernel_sums_to_the_2d_kernel():
    weight = torch.randn(4, 3, 3, 3)
    inflated = inflate_kernel(weight, 5)
    assert inflated.shape == (4, 3, 5, 3, 3)
    torch.testing.assert_close(inflated.sum(dim=2), weight)


@pytest.mark.parametrize("name, size", [("resnet18", 32), ("resnet50", 32), ("cifar_resnet20", 16)])
def test_inflated_resnet_on_a_constant_clip_equals_the_2d_model(name, size, tmp_path):
    torch.manual_seed(0)
    model2d = create_backbone(name, num_classes=10).eval()
    for m in model2d.modules():  # non-trivial batch-norm statistics, so they are checked too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "2d.pth"
    torch.save(model2d.state_dict(), path)
    model3d = create_backbone("inflated", base=name, num_classes=10, weights=str(path)).eval()
    image = torch.randn(2, 3, size, size)
    clip = image.unsqueeze(2).repeat(1, 1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model3d(clip), model2d(image), rtol=1e-4, atol=1e-4)
        for f2, f3 in zip(model2d.forward_features(image), model3d.forward_features(clip)):
            assert f3.shape == (f2.shape[0], f2.shape[1], 3, *f2.shape[2:])
            torch.testing.assert_close(f3, f2.unsqueeze(2).expand_as(f3), rtol=1e-3, atol=1e-3)
    assert model3d.feature_info == model2d.feature_info


def test_torchvision_resnet18_checkpoint_inflates(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("inflated_resnet18", weights=str(path)).eval()
    assert type(model).__name__ == "InflatedResNet"
    assert model.conv1.weight.shape == (64, 3, 7, 7, 7) and model.layer1[0].conv1.weight.shape == (64, 64, 3, 3, 3)
    assert model.layer2[0].downsample[0].weight.shape == (128, 64, 1, 1, 1)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(image.unsqueeze(2).repeat(1, 1, 2, 1, 1)), reference(image),
                                   rtol=1e-4, atol=1e-4)
    # the inflated model's own (3D) state_dict loads back as it is
    path3d = tmp_path / "inflated.pth"
    torch.save(model.state_dict(), path3d)
    again = create_backbone("inflated_resnet18", weights=str(path3d))
    torch.testing.assert_close(again.conv1.weight, model.conv1.weight)


def test_inflation_sees_motion_and_time_kernels_are_configurable():
    model = create_backbone("inflated_resnet18", num_classes=5, time_kernel=3).eval()
    assert model.conv1.weight.shape[2] == 3
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(clip), model(clip.flip(2)[:, :, [1, 0, 3, 2]]))
    with pytest.raises(ValueError, match="already inflated"):
        inflate(model)
    with pytest.raises(ValueError, match="not a 2D image backbone"):
        create_backbone("inflated", base="c3d")
    assert {"inflated", "inflated_resnet18", "inflated_resnet50", "c3d", "r3d_18"} <= set(list_backbones())


def test_frame_averaged_2d_model_averages_per_frame_outputs():
    model2d = create_backbone("resnet18", num_classes=4, widths=(8, 16, 32, 64)).eval()
    model = FrameAveraged(model2d).eval()
    clip = torch.randn(2, 3, 5, 32, 32)
    with torch.no_grad():
        expected = torch.stack([model2d(clip[:, :, t]) for t in range(5)]).mean(dim=0)
        torch.testing.assert_close(model(clip), expected)
        # a per-frame model cannot tell a clip from the same clip played backwards
        torch.testing.assert_close(model(clip.flip(2)), model(clip))
        assert [f.shape[2] for f in model.forward_features(clip)] == [5] * len(model.feature_info)
    assert model.get_classifier() is model2d.fc
