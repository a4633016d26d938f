"""Mixup / CutMix on training batches (ClassificationTask's mixup_alpha, cutmix_alpha, mixup_prob,
mixup_switch_prob): torchvision's ops, drawn from torch's global generator in the training step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from tasks import ClassificationTask
from tasks.cli import main as cli
from tests.helpers import classification_args
from tests.recipes.recorders import StepRecorder

N_CLASSES = 6


def make_task(**kwargs) -> ClassificationTask:
    return ClassificationTask(backbone="cifar_resnet20", num_classes=N_CLASSES, **kwargs)


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # consecutive labels differ, so every mixed pair has two distinct classes
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % N_CLASSES


def mixed_like_torchvision(task, op, images, labels, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's mixed batch, checked equal to torchvision's ``op`` under the same torch seed."""
    torch.manual_seed(seed)
    mixed, targets = task.mix_batch(images, labels)
    torch.manual_seed(seed)
    expected_images, expected_targets = op(images, labels)
    assert torch.equal(mixed, expected_images) and torch.equal(targets, expected_targets)
    return mixed, targets


def test_mixup_equals_torchvision_and_targets_hold_lambda():
    images, labels = batch()
    task = make_task(mixup_alpha=0.2)
    for seed in range(3):
        mixed, targets = mixed_like_torchvision(task, v2.MixUp(alpha=0.2, num_classes=N_CLASSES), images, labels, seed)
        # independently: lambda ~ Beta(0.2, 0.2) from the same draw, each image mixed with its predecessor
        torch.manual_seed(seed)
        lam = float(torch.distributions.Beta(torch.tensor([0.2]), torch.tensor([0.2])).sample(()))
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
        one_hot = F.one_hot(labels, N_CLASSES).float()
        torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(labels)))


def test_cutmix_equals_torchvision_and_targets_hold_the_pasted_area():
    images, labels = batch()
    task = make_task(cutmix_alpha=1.0)
    for seed in range(3):
        mixed, targets = mixed_like_torchvision(task, v2.CutMix(alpha=1.0, num_classes=N_CLASSES), images, labels,
                                                seed)
        # independently: a box of the previous image is pasted; its area fraction is the previous label's weight
        pasted = mixed != images
        assert torch.equal(mixed[pasted], images.roll(1, 0)[pasted])
        area = pasted[:, 0].float().mean(dim=(1, 2))
        index = torch.arange(len(labels))
        torch.testing.assert_close(targets[index, labels.roll(1, 0)], area)
        torch.testing.assert_close(targets[index, labels], 1 - area)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(labels)))


def test_both_switch_like_timm_and_prob_leaves_some_batches_unmixed():
    images, labels = batch()
    task = make_task(mixup_alpha=0.2, cutmix_alpha=1.0, mixup_switch_prob=0.5)
    reference = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=N_CLASSES),
                                 v2.CutMix(alpha=1.0, num_classes=N_CLASSES)], p=[0.5, 0.5])
    kinds = set()
    for seed in range(12):
        mixed, targets = mixed_like_torchvision(task, reference, images, labels, seed)
        kinds.add("cutmix" if (mixed == images).any() else "mixup")  # CutMix keeps pixels outside the box
    assert kinds == {"mixup", "cutmix"}

    task = make_task(mixup_alpha=0.2, mixup_prob=0.5)
    reference = v2.RandomApply([v2.MixUp(alpha=0.2, num_classes=N_CLASSES)], p=0.5)
    mixed_batches = 0
    for seed in range(12):
        mixed, targets = mixed_like_torchvision(task, reference, images, labels, seed)
        mixed_batches += targets.ndim == 2
    assert 0 < mixed_batches < 12


def test_training_loss_is_smoothed_cross_entropy_on_the_mixed_batch_and_validation_is_unmixed():
    images, labels = batch()
    task = make_task(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1).eval()
    torch.manual_seed(5)
    loss, _ = task.compute_loss({"image": images, "label": labels}, "train")
    torch.manual_seed(5)
    mixed, targets = task.mix_batch(images, labels)
    smoothed = targets * 0.9 + 0.1 / N_CLASSES
    with torch.no_grad():
        log_probs = task.backbone(mixed).log_softmax(dim=1)
        clean = F.cross_entropy(task.backbone(images), labels, label_smoothing=0.1)
    torch.testing.assert_close(loss, -(smoothed * log_probs).sum(dim=1).mean())
    assert not torch.allclose(loss, clean)
    val_loss, _ = task.compute_loss({"image": images, "label": labels}, "val")
    torch.testing.assert_close(val_loss, clean)


@pytest.mark.parametrize("key, value", [("mixup_alpha", -0.2), ("cutmix_alpha", -1.0), ("mixup_prob", 1.5),
                                        ("mixup_switch_prob", -0.1)])
def test_out_of_range_arguments_are_named(key, value):
    with pytest.raises(ValueError, match=f"model.init_args.{key} must be in"):
        make_task(**{key: value})


def test_yaml_run_mixes_in_the_training_step(classification_root, tmp_path):
    (tmp_path / "mix.yaml").write_text(
        "model:\n  init_args:\n    mixup_alpha: 0.2\n    cutmix_alpha: 1.0\n    label_smoothing: 0.1\n"
        "trainer:\n  callbacks:\n    - class_path: tests.recipes.recorders.StepRecorder\n")
    fit = cli(["fit", *classification_args(classification_root, tmp_path, "--config", str(tmp_path / "mix.yaml"),
                                           "--trainer.max_epochs", "1")])
    assert fit.trainer.global_step == 4 and torch.isfinite(fit.trainer.callback_metrics["train/loss"])
    recorder = next(cb for cb in fit.trainer.callbacks if isinstance(cb, StepRecorder))
    first = recorder.first_batch
    # oracle: the first step's loss from its starting weights, torch's generator as the step found it, and
    # torchvision's ops
    model = copy.deepcopy(fit.model.backbone)
    model.load_state_dict({k[len("backbone."):]: v for k, v in first["state"].items() if k.startswith("backbone.")})
    torch.set_rng_state(first["rng"])
    mixed, targets = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=N_CLASSES),
                                      v2.CutMix(alpha=1.0, num_classes=N_CLASSES)])(first["batch"]["image"],
                                                                                    first["batch"]["label"])
    with torch.no_grad():
        expected = F.cross_entropy(model.train()(mixed), targets, label_smoothing=0.1)
    torch.testing.assert_close(first["loss"], expected)
