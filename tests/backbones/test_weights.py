"""Weights: torchvision state_dicts load into ours unchanged and give the same outputs; class-count
mismatches, missing/unexpected keys, unsafe pickles, named torchvision weights from a pre-filled cache,
Lightning checkpoints of ClassificationTask, and timm checkpoints."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from densecnn import WeightsError, create_backbone, load_weights

# densecnn name -> torchvision constructor; the VGG-13/16/19 pairs and the deep ResNets move ~0.5 GB each
# through the disk, so they run in the slow pass
PAIRS = {
    "alexnet_torchvision": ("alexnet", {}),
    "vgg11": ("vgg11", {}), "vgg11_bn": ("vgg11_bn", {}),
    "vgg13": ("vgg13", {}), "vgg13_bn": ("vgg13_bn", {}),
    "vgg16": ("vgg16", {}), "vgg16_bn": ("vgg16_bn", {}),
    "vgg19": ("vgg19", {}), "vgg19_bn": ("vgg19_bn", {}),
    # weights turn torchvision's input re-normalisation on in ours, as torchvision's builder does with its own
    "googlenet_torchvision": ("googlenet", {"aux_logits": True, "init_weights": True, "transform_input": True}),
    "resnet18": ("resnet18", {}), "resnet34": ("resnet34", {}), "resnet50": ("resnet50", {}),
    "resnet101": ("resnet101", {}), "resnet152": ("resnet152", {}),
}
FAST = {"alexnet_torchvision", "vgg11_bn", "googlenet_torchvision", "resnet18", "resnet50"}


def _randomise_bn_statistics(model: nn.Module) -> None:
    """Fresh BN layers are identities in eval mode; random statistics make the comparison bite."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PAIRS])
def test_torchvision_state_dict_loads_unchanged_and_gives_the_same_outputs(name, tmp_path):
    torch.manual_seed(0)
    tv_name, tv_kwargs = PAIRS[name]
    reference = getattr(torchvision.models, tv_name)(**tv_kwargs)
    _randomise_bn_statistics(reference)
    path = tmp_path / f"{tv_name}.pth"
    torch.save(reference.state_dict(), path)
    ours = create_backbone(name, weights=path)  # strict: every key and shape must match
    reference.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    _randomise_bn_statistics(reference)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.eval()


def test_another_class_count_drops_the_classifier_with_a_message(resnet18_file):
    path, reference = resnet18_file
    with pytest.warns(UserWarning, match=r"fc\.weight, fc\.bias were trained for another number of classes"):
        model = create_backbone("resnet18", num_classes=10, weights=path)
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # everything up to the classifier is the file's
        torch.testing.assert_close(model.eval().forward_features(x)[-1],
                                   torch.nn.Sequential(*list(reference.children())[:-2])(x))


def test_torchvision_weights_into_the_paper_variants_point_at_the_right_name(tmp_path):
    # the telling keys of torchvision's files: AlexNet's 64-filter conv1, GoogLeNet's batch-norm convs
    for ours, state in (("alexnet", {"features.0.weight": torch.zeros(64, 3, 11, 11)}),
                        ("googlenet", {"conv1.conv.weight": torch.zeros(64, 3, 7, 7), "conv1.bn.weight": torch.ones(64)})):
        path = tmp_path / f"{ours}.pth"
        torch.save(state, path)
        with pytest.raises(WeightsError, match=f"build '{ours}_torchvision'"):
            create_backbone(ours, weights=path)


def test_feature_extractor_ignores_the_files_classifier(resnet18_file):
    path, _ = resnet18_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_backbone("resnet18", num_classes=0, weights=path)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_googlenet_aux_heads_follow_the_class_count(tmp_path):
    reference = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="auxiliary classifier weights aux1.fc2.weight"):
        model = create_backbone("googlenet_torchvision", num_classes=10, weights=path)
    torch.testing.assert_close(model.aux1.fc1.weight, reference.aux1.fc1.weight)
    headless = create_backbone("googlenet_torchvision", aux_logits=False, weights=path)
    assert headless.aux1 is None
    torch.testing.assert_close(headless.fc.weight, reference.fc.weight)


def test_missing_and_unexpected_keys_are_named_and_strict_false_loads_the_rest(resnet18_file, tmp_path):
    path, reference = resnet18_file
    state = torch.load(path, weights_only=True)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    edited = tmp_path / "edited.pth"
    torch.save(state, edited)
    with pytest.raises(WeightsError, match=r"missing in the file: layer1\.0\.conv1\.weight.*unexpected in the "
                                           r"file: extra\.weight.*strict=False"):
        create_backbone("resnet18", weights=edited)
    with pytest.warns(UserWarning, match=r"layer1\.0\.conv1\.weight.*extra\.weight"):
        model = create_backbone("resnet18", weights=edited, strict=False)
    torch.testing.assert_close(model.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)


def test_weights_for_another_architecture_are_an_error_naming_the_keys(resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(WeightsError, match=r"missing in the file: layer1\.2\."):
        create_backbone("resnet34", weights=path)
    with pytest.raises(WeightsError, match=r"shapes do not match.*conv1\.weight: file \(64, 3, 7, 7\)"):
        create_backbone("cifar_resnet20", weights=path, strict=False)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > PWNED_MARKER",))


class _Plain:
    def __init__(self):
        self.weights = torch.zeros(2)


@pytest.mark.parametrize("payload", [lambda: {"fc.weight": _RunsCode()}, lambda: _Plain(),
                                     lambda: torchvision.models.resnet18()])
def test_a_file_holding_python_objects_is_refused(payload, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save(payload(), path)
    with pytest.raises(WeightsError, match="refused to load.*could run code"):
        create_backbone("resnet18", weights=path)
    assert not (tmp_path / "PWNED_MARKER").exists()
    raw = tmp_path / "evil.pkl"  # a plain pickle, not torch's zip format
    raw.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(WeightsError):
        create_backbone("resnet18", weights=raw)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_missing_or_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.pth: weights file not found"):
        create_backbone("lenet5", weights=tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(WeightsError, match="junk.pth"):
        create_backbone("lenet5", weights=junk)


def test_any_junk_file_is_a_weights_error_naming_it(tmp_path):
    """Random bytes fail anywhere in the weights-only unpickler (EOF, assertion, unicode, ...); each failure
    must come back as the same named error."""
    import numpy as np

    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.pth"
    for _ in range(200):
        junk.write_bytes(rng.bytes(int(rng.integers(1, 512))))
        with pytest.raises(WeightsError, match="junk.pth"):
            create_backbone("lenet5", weights=junk)


def test_named_torchvision_weights_come_from_the_hub_cache(resnet18_file, tmp_path, monkeypatch):
    import hashlib

    import densecnn.weights

    path, reference = resnet18_file
    # the cached file is checked against the SHA256 prefix in its name (tests/backbones/test_safe_loading.py):
    # name this stand-in for torchvision's file after its own hash
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    url = f"https://download.pytorch.org/models/resnet18-{sha[:8]}.pth"
    real_url = densecnn.weights._torchvision_weight_url
    monkeypatch.setattr(densecnn.weights, "_torchvision_weight_url",
                        lambda name: url if name == "ResNet18_Weights.IMAGENET1K_V1" else real_url(name))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / os.path.basename(url)).write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = create_backbone("resnet18", weights="torchvision:ResNet18_Weights.IMAGENET1K_V1").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(WeightsError, match="torchvision:ResNet18_Weights.NOPE"):
        create_backbone("resnet18", weights="torchvision:ResNet18_Weights.NOPE")


def test_lightning_checkpoint_of_a_classification_task_loads_its_backbone(classification_root, tmp_path):
    import pytorch_lightning as pl

    from tasks import ClassificationTask, ImageFolderDataModule

    task = ClassificationTask(backbone="cifar_resnet20", num_classes=6)
    data = ImageFolderDataModule(root=str(classification_root), batch_size=8, num_workers=0, image_size=32)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         limit_val_batches=1)
    trainer.fit(task, datamodule=data)
    ckpt = tmp_path / "task.ckpt"
    trainer.save_checkpoint(ckpt)
    model = create_backbone("cifar_resnet20", num_classes=6, weights=ckpt).eval()
    task.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), task.backbone(x))


def test_timm_checkpoint_loads_into_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet18").eval()
    _randomise_bn_statistics(reference)
    path = tmp_path / "timm_resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("timm:resnet18", num_classes=0, weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)[-1], reference.forward_features(x))
    assert [i.reduction for i in model.feature_info] == [2, 4, 8, 16, 32]
    # with a classifier, timm's fc becomes our head: the same logits as timm's model
    classifier = create_backbone("timm:resnet18", weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference(x))
    with pytest.warns(UserWarning, match=r"head\.weight, head\.bias were trained for another number of classes"):
        create_backbone("timm:resnet18", num_classes=3, weights=path)


def test_load_weights_into_an_existing_model(tmp_path):
    source = create_backbone("allcnn_c")
    path = tmp_path / "allcnn.safetensors"
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(path))
    target = load_weights(create_backbone("allcnn_c"), path)
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
