"""Each architecture against its paper's table: parameter counts, map sizes, module widths, multiply-adds.

Counting is done on the meta device (shapes only, no memory), so even VGG-19 costs nothing here.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from densecnn import create_backbone
from densecnn.backbones.allcnn import AllCNN
from densecnn.backbones.googlenet import GoogLeNet
from densecnn.summary import summarize


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_backbone(name, **kwargs)


# ---- AlexNet ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("alexnet", 60_965_224), ("alexnet_1tower", 62_378_344),
                                            ("alexnet_torchvision", 61_100_840)])
def test_alexnet_parameter_counts(name, expected):
    assert n_params(meta(name)) == expected


def test_alexnet_per_layer_parameters_and_grouping():
    model = meta("alexnet_1tower")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [n_params(m) for m in convs + fcs] == [34_944, 614_656, 885_120, 1_327_488, 884_992,
                                                  37_752_832, 16_781_312, 4_097_000]
    # "no conv layer has more than 1% of the parameters" is about the paper's towers; the FCs hold ~94%
    assert sum(n_params(m) for m in fcs) / n_params(model) > 0.9
    grouped = [m.groups for m in meta("alexnet").features if isinstance(m, nn.Conv2d)]
    assert grouped == [1, 2, 1, 2, 2]  # conv3 is the one layer that talks across the GPUs


def test_alexnet_227_gives_the_55_27_13_6_chain():
    model = create_backbone("alexnet").eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for m in model.features if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 227, 227))
    for h in hooks:
        h.remove()
    assert sizes == [(96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13),
                     (256, 13, 13), (256, 6, 6)]
    assert logits.shape == (1, 1000)
    # neurons per layer (S1 L118): 186,624 / 64,896 / 64,896 / 43,264 for conv2-5 (conv1's 253,440 is an erratum)
    conv_outputs = [sizes[i] for i in (0, 2, 4, 5, 6)]
    assert [c * h * w for c, h, w in conv_outputs][1:] == [186_624, 64_896, 64_896, 43_264]


def test_alexnet_paper_initialisation_and_dropout():
    model = create_backbone("alexnet")
    f, c = model.features, model.classifier
    assert abs(f[0].weight.std().item() - 0.01) < 1e-3
    assert [float(f[i].bias.mean()) for i in (0, 4, 8, 10, 12)] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert [float(c[i].bias.mean()) for i in (0, 3, 6)] == [1.0, 1.0, 0.0]
    assert [m.p for m in c if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    lrn = [m for m in f if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 2 and (lrn[0].size, lrn[0].k, lrn[0].beta) == (5, 2.0, 0.75)
    pools = [m for m in f if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)  # overlapping: z=3 > s=2


# ---- ZF-Net ----------------------------------------------------------------------------------------------------
def test_zfnet_follows_figure_3():
    model = create_backbone("zfnet").eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for m in model.features if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert sizes == [(96, 110, 110), (96, 55, 55), (256, 26, 26), (256, 13, 13), (384, 13, 13), (384, 13, 13),
                     (256, 13, 13), (256, 6, 6)]
    assert n_params(model) == 62_357_608


# ---- VGG ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("vgg11", 132_863_336), ("vgg11_lrn", 132_863_336), ("vgg13", 133_047_848), ("vgg16_c", 133_638_952),
    ("vgg16", 138_357_544), ("vgg19", 143_667_240)])
def test_vgg_parameter_counts_of_table_2(name, expected):
    model = meta(name)
    assert n_params(model) == expected
    assert n_params(model.classifier) == 123_642_856  # the FC part, shared by all configs
    bn = meta(name + "_bn")
    assert n_params(bn) == expected + 2 * sum(m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d))


def test_vgg16_weights_per_layer_and_configuration_c():
    convs = [m for m in meta("vgg16").features if isinstance(m, nn.Conv2d)]
    assert [m.weight.numel() for m in convs] == [1_728, 36_864, 73_728, 147_456, 294_912, 589_824, 589_824,
                                                 1_179_648] + [2_359_296] * 5  # S2 L641-788
    kernels = [m.kernel_size[0] for m in meta("vgg16_c").features if isinstance(m, nn.Conv2d)]
    assert kernels == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in meta("vgg11_lrn").features) == 1
    assert [sum(isinstance(m, nn.Conv2d) for m in meta(n).features) + 3 for n in
            ("vgg11", "vgg13", "vgg16_c", "vgg16", "vgg19")] == [11, 13, 16, 16, 19]


def test_vgg16_memory_in_early_convs_parameters_in_first_fc():
    # S2 L790-791: "most memory in early conv layers, most params in early FC layers"
    s = summarize("vgg16")
    activations = [(r.name, torch.Size(r.output_shape).numel()) for r in s.rows if r.kind == "Conv2d"]
    assert max(activations, key=lambda a: a[1])[0] in ("features.0", "features.2")
    assert max(s.rows, key=lambda r: r.params).name == "classifier.0"
    assert abs(s.mult_adds / 15.3e9 - 1) < 0.02 and abs(summarize("vgg19").mult_adds / 19.6e9 - 1) < 0.02


# ---- GoogLeNet / BN-Inception ----------------------------------------------------------------------------------
TABLE_1_CHANNELS = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832, "5a": 832, "5b": 1024}
# SEED_NOTES 1.6, computed from Table 1's filter counts (no biases, 5x5 branch)
TABLE_1_PARAMS = {"3a": 163_328, "3b": 388_096, "4a": 375_552, "4b": 448_512, "4c": 509_440, "4d": 604_672,
                  "4e": 867_328, "5a": 1_042_432, "5b": 1_442_816}


@pytest.mark.parametrize("name", ["googlenet", "googlenet_torchvision"])
def test_googlenet_module_widths_follow_table_1(name):
    model = meta(name)
    for key, channels in TABLE_1_CHANNELS.items():
        assert getattr(model, f"inception{key}").out_channels == channels
    if name == "googlenet":
        for key, params in TABLE_1_PARAMS.items():
            weights = sum(p.numel() for n, p in getattr(model, f"inception{key}").named_parameters() if "weight" in n)
            assert weights == params, key


def test_googlenet_shapes_aux_heads_and_dropout():
    model = create_backbone("googlenet")
    x = torch.randn(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 112, 112), (192, 56, 56), (480, 28, 28), (832, 14, 14),
                                                      (1024, 7, 7)]
    assert logits.shape == (2, 1000)
    assert model.dropout.p == 0.4 and model.aux1.dropout.p == 0.7
    kernels = {m.kernel_size for m in model.inception3a.branch3.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(1, 1), (5, 5)}
    model.train()
    logits, aux = model.forward_with_aux(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1000) and [o.shape for o in aux] == [(2, 1000)] * 2
    # the aux heads see 4x4x512 / 4x4x528 after the 5x5/3 average pool (SEED_NOTES 1.6)
    seen = []
    model.aux1.conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:])))
    model.aux2.conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:])))
    model.forward_with_aux(torch.randn(1, 3, 224, 224))
    assert seen == [(512, 4, 4), (528, 4, 4)]
    assert summarize("googlenet_torchvision").mult_adds < 1.5e9 * 1.01  # "< 1.5 Bn ops" (S2 L930-936)
    assert GoogLeNet(num_classes=0).aux1 is None


def test_bn_inception_figure_5():
    model = meta("bn_inception")
    widths = {k: getattr(model, f"inception{k}").out_channels for k in
              ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b")}
    assert widths == {"3a": 256, "3b": 320, "3c": 576, "4a": 576, "4b": 576, "4c": 608, "4d": 608, "4e": 1056,
                      "5a": 1024, "5b": 1024}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) and all(c.bias is None for c in convs)  # BN before every non-linearity
    assert all(c.kernel_size in ((1, 1), (3, 3), (7, 7)) for c in convs)  # no 5x5: two 3x3 instead


# ---- ResNet ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs, expected", [
    ("resnet18", {}, 11_689_512), ("resnet34", {}, 21_797_672), ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160), ("resnet152", {}, 60_192_808),
    ("resnet18", {"shortcut": "A"}, 11_515_688), ("resnet34", {"shortcut": "A"}, 21_623_848),
    ("plain_resnet34", {}, 21_623_848)])
def test_resnet_parameter_counts(name, kwargs, expected):
    assert n_params(meta(name, **kwargs)) == expected


def test_plain34_weights_and_option_c_projections():
    plain = meta("plain_resnet34")
    weights = sum(m.weight.numel() for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights == 21_607_616  # SEED_NOTES 1.9 / 7.8: weights only (no biases, no BN); the FC holds 0.51M
    assert plain.fc.weight.numel() == 512_000
    c = meta("resnet34", shortcut="C")
    projections = sum(1 for m in c.modules() if isinstance(m, nn.Sequential) and len(m) == 2
                      and isinstance(m[0], nn.Conv2d) and m[0].kernel_size == (1, 1))
    assert projections == 16  # every block; option B has 3, so C adds the paper's "thirteen"


@pytest.mark.parametrize("n, expected", [(3, 269_722), (5, 464_154), (7, 658_586), (9, 853_018), (18, 1_727_962),
                                         (200, 19_421_274)])
def test_cifar_resnet_parameter_counts(n, expected):
    assert n_params(meta(f"cifar_resnet{6 * n + 2}")) == expected


@pytest.mark.parametrize("depth, paper", [(18, 1.8e9), (34, 3.6e9), (50, 3.8e9), (101, 7.6e9), (152, 11.3e9)])
def test_resnet_multiply_adds_of_table_1(depth, paper):
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"resnet{depth}")()
    ours = summarize(f"resnet{depth}").mult_adds
    assert ours == summarize(tv, (3, 224, 224)).mult_adds  # the same network as torchvision's
    # torchvision's layout is within 8% of the paper (ResNet-50: 4.09 G vs 3.8 G, stride on the 3x3);
    assert abs(ours / paper - 1) < 0.08
    # putting the stride on the first 1x1, as the paper's Caffe model did, gives the paper's numbers
    paper_layout = summarize(f"resnet{depth}", stride_in_1x1=True).mult_adds
    assert abs(paper_layout / paper - 1) < 0.025
    assert abs(summarize("plain_resnet34").mult_adds / 3.6e9 - 1) < 0.02


# ---- NiN, All-CNN, Jarrett, LeNet --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("allcnn_a_base", 839_242), ("allcnn_b_base", 885_610), ("allcnn_c_base", 954_730),
    ("allcnn_a", 1_254_250), ("allcnn_b", 1_300_618), ("allcnn_c", 1_369_738),
    ("allcnn_a_strided", 839_242), ("allcnn_c_strided", 954_730), ("allcnn_c_convpool", 1_369_738)])
def test_allcnn_parameter_counts(name, expected):
    assert n_params(meta(name)) == expected


def test_allcnn_c_replaces_pooling_by_strided_convolutions():
    model = create_backbone("allcnn_c").eval()
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    strides = [m.stride[0] for m in model.features if isinstance(m, nn.Conv2d)]
    assert strides == [1, 1, 2, 1, 1, 2, 1, 1]
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features[-1].shape[-2:] == (6, 6)  # "global averaging over 6x6"
    dropouts = [m.p for m in model.features if isinstance(m, nn.Dropout)]
    assert dropouts == [0.2, 0.5, 0.5]
    with pytest.raises(ValueError, match="variant"):
        AllCNN("C", "fancy")
    with pytest.raises(ValueError, match="model"):
        AllCNN("D")


def test_nin_has_mlpconv_layers_and_no_fully_connected_layer():
    for name, size in (("nin", 224), ("nin_cifar", 32)):
        model = create_backbone(name).eval()
        assert not any(isinstance(m, nn.Linear) for m in model.modules())
        one_by_one = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
        assert one_by_one == (8 if name == "nin" else 6)
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, model.num_classes)
            assert model(torch.randn(1, 3, size + 32, size + 32)).shape == (1, model.num_classes)  # any size
    assert abs(n_params(meta("nin")) - 7.6e6) < 0.1e6 and abs(n_params(meta("nin_cifar")) - 0.97e6) < 0.01e6


def test_jarrett_stage_sizes_and_modules():
    model = create_backbone("jarrett").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 1, 143, 143))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 26, 26), (256, 4, 4)]
    kinds = [type(m).__name__ for m in model.stage1]
    assert kinds == ["FilterBankCSG", "AbsRectification", "LocalContrastNorm", "AvgPool2d"]
    assert model.stage1[0].conv.kernel_size == (9, 9) and model.stage1[0].gain.shape == (64,)
    assert [type(m).__name__ for m in create_backbone("jarrett", composition="F-PM").stage1] == [
        "FilterBankCSG", "MaxPool2d"]
    with pytest.raises(ValueError, match="composition"):
        create_backbone("jarrett", composition="F-N")


def test_lenet5_shape_chain():
    model = create_backbone("lenet5").eval()
    with torch.no_grad():
        s2, s4, c5 = model.forward_features(torch.randn(1, 1, 32, 32))
    assert [tuple(t.shape[1:]) for t in (s2, s4, c5)] == [(6, 14, 14), (16, 5, 5), (120, 1, 1)]
    assert model.f6.out_features == 84 and model(torch.randn(1, 1, 32, 32)).shape == (1, 10)
