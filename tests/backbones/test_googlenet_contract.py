"""GoogLeNet keeps the backbone contract: ``forward`` returns one logits tensor in training and eval for every
Inception variant; the auxiliary classifiers reach ClassificationTask through ``forward_with_aux`` and are
weighted 0.3 (Szegedy et al. 2014 Section 5; SEED_NOTES 1.6); torchvision's weights get torchvision's input
re-normalisation; the stem's LRN is BVLC's."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from densecnn import create_backbone, list_backbones
from densecnn.backbones.googlenet import GoogLeNet
from tasks import ClassificationTask, VideoClassificationTask

INCEPTIONS = [n for n in list_backbones() if "googlenet" in n or "inception" in n]


def test_the_inception_family_is_registered():
    assert {"googlenet", "googlenet_torchvision", "bn_inception"} <= set(INCEPTIONS)


@pytest.mark.parametrize("name", INCEPTIONS)
def test_forward_returns_one_logits_tensor_in_train_and_eval(name):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    for training in (True, False):
        model.train(training)
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7), (name, training)
    with torch.no_grad():  # eval: forward is the head on the deepest map
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)[-1]))


@pytest.mark.parametrize("name", ["googlenet", "googlenet_torchvision"])
def test_forward_with_aux_gives_the_two_heads_in_training_only(name):
    model = create_backbone(name, num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    logits, aux = model.forward_with_aux(x)
    assert [a.shape for a in aux] == [(2, 5), (2, 5)]
    model.eval()
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x)
        assert aux == [] and torch.equal(logits, model(x))
    assert create_backbone(name, num_classes=5, aux_logits=False).train().forward_with_aux(x)[1] == []


def test_classification_loss_is_main_plus_0_3_times_each_aux_cross_entropy():
    # dropout off so the hand computation sees the same activations; the aux heads' inputs (4a, 4d) are taken
    # with hooks from a plain forward pass, which runs no auxiliary head
    task = ClassificationTask(backbone="googlenet", num_classes=5, backbone_kwargs={"dropout": 0.0,
                                                                                     "dropout_aux": 0.0})
    assert task.hparams.aux_loss_weight == 0.3
    net: GoogLeNet = task.backbone
    torch.manual_seed(2)
    batch = {"image": torch.randn(3, 3, 64, 64), "label": torch.tensor([0, 4, 2])}
    task.train()
    loss, logits = task.compute_loss(batch, "train")
    taps = {}
    hooks = [getattr(net, f"inception{k}").register_forward_hook(lambda m, i, o, k=k: taps.__setitem__(k, o))
             for k in ("4a", "4d")]
    main = net(batch["image"])
    for h in hooks:
        h.remove()
    y = batch["label"]
    expected = F.cross_entropy(main, y) + 0.3 * (F.cross_entropy(net.aux1(taps["4a"]), y)
                                                 + F.cross_entropy(net.aux2(taps["4d"]), y))
    torch.testing.assert_close(logits, main)
    torch.testing.assert_close(loss, expected)
    assert loss > F.cross_entropy(main, y)  # the auxiliary terms are really there
    task.eval()
    with torch.no_grad():  # validation: the main loss alone
        val_loss, _ = task.compute_loss(batch, "val")
    torch.testing.assert_close(val_loss, F.cross_entropy(main.detach(), y), rtol=1e-5, atol=1e-6)


def test_aux_losses_train_the_aux_heads():
    task = ClassificationTask(backbone="googlenet", num_classes=3).train()
    loss, _ = task.compute_loss({"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([0, 1])}, "train")
    loss.backward()
    assert task.backbone.aux1.fc2.weight.grad.abs().sum() > 0 and task.backbone.aux2.fc2.weight.grad.abs().sum() > 0


def test_per_frame_video_baseline_on_googlenet_takes_a_training_step():
    torch.manual_seed(3)
    task = VideoClassificationTask(backbone="googlenet", num_classes=4, clip_len=3, crop_size=64).train()
    clips = torch.randn(2, 3, 3, 64, 64)
    labels = torch.tensor([1, 3])
    model2d = task.backbone.model
    torch.manual_seed(4)
    loss, _ = task.compute_loss({"video": clips, "label": labels}, "train")
    # oracle: the 2D network on every frame (same dropout draws), its logits averaged over time
    torch.manual_seed(4)
    frames = clips.transpose(1, 2).reshape(6, 3, 64, 64)
    expected = F.cross_entropy(model2d(frames).view(2, 3, 4).mean(1), labels)
    torch.testing.assert_close(loss, expected)
    first = model2d.conv1.conv.weight
    before = first.detach().clone()
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(first.detach(), before)


def _randomise(model: nn.Module) -> None:
    """torchvision's init (std 0.01) makes every input give nearly the same logits; He-scaled weights and
    random BN statistics make the output depend on the input, so the comparison can fail."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def test_torchvision_weights_turn_on_torchvisions_input_transform(tmp_path):
    torch.manual_seed(5)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True,
                                             init_weights=True).eval()
    _randomise(reference)
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    ours = create_backbone("googlenet_torchvision", weights=path).eval()
    assert ours.transform_input and not create_backbone("googlenet_torchvision").transform_input
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        expected = reference(x)
        assert (expected[0] - expected[1]).abs().max() > 0.02 * expected.abs().max()  # input-dependent
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-5)
        # given explicitly, the option wins (as in torchvision's builder); without it the logits differ
        plain = create_backbone("googlenet_torchvision", weights=path, transform_input=False).eval()
        assert not plain.transform_input
        assert not torch.allclose(plain(x), expected, rtol=1e-3, atol=1e-3)


def test_transform_input_is_torchvisions_formula():
    model = create_backbone("googlenet_torchvision", transform_input=True)
    x = torch.randn(1, 3, 4, 4)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)  # undo ImageNet normalisation
    torch.testing.assert_close(model._transform_input(x), (pixels - 0.5) / 0.5)


def test_stem_lrn_is_bvlcs_caffe_formula():
    model = create_backbone("googlenet")
    a = torch.rand(1, 7, 3, 3) * 10
    n, alpha, beta, k = 5, 1e-4, 0.75, 1.0  # bvlc_googlenet/train_val.prototxt, Caffe's default k
    squares = F.pad(a.pow(2), (0, 0, 0, 0, n // 2, n // 2))
    window = torch.stack([squares[:, i:i + a.shape[1]] for i in range(n)]).sum(0)
    expected = a / (k + alpha / n * window).pow(beta)  # Caffe's ACROSS_CHANNELS LRN
    for lrn in (model.lrn1, model.lrn2):
        torch.testing.assert_close(lrn(a), expected)
