"""ClassificationTask and BaseTask pieces: TTA, auxiliary losses, optimisation, fine-tuning, weights."""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
import torchvision
from torch import nn

from densecnn import create_backbone
from tasks import CheckpointError, ClassificationTask, ImageFolderDataModule


def _task(**kwargs) -> ClassificationTask:
    kwargs.setdefault("backbone", "cifar_resnet20")
    kwargs.setdefault("num_classes", 6)
    return ClassificationTask(**kwargs)


def test_ten_crop_averages_the_softmax_of_the_ten_crops():
    task = _task(tta="ten_crop", tta_crop_size=28).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        probs = task.predict_probs(images)
        crops = torchvision.transforms.v2.functional.ten_crop(images, [28, 28])
        expected = torch.stack([task.backbone(c).softmax(1) for c in crops]).mean(0)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


def test_multi_scale_averages_over_scales():
    task = _task(tta="multi_scale", tta_scales=[24, 32, 40]).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        probs = task.predict_probs(images)
        single = task.backbone(images).softmax(1)
    assert probs.shape == (2, 6) and not torch.allclose(probs, single)
    with pytest.raises(ValueError, match="tta_scales"):
        _task(tta="multi_scale")
    with pytest.raises(ValueError, match="tta.*not one of"):
        _task(tta="twelve_crop")


class _AuxNet(nn.Module):
    """Has an auxiliary classifier like GoogLeNet: ``forward`` gives the logits, ``forward_with_aux`` both."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.aux = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))

    def forward_with_aux(self, x):
        x = x.mean((2, 3))
        return self.fc(x), ([self.aux(x)] if self.training else [])


def test_auxiliary_classifier_losses_are_weighted_in_training_only():
    task = _task(num_classes=4, aux_loss_weight=0.3)
    task.backbone = _AuxNet()
    batch = {"image": torch.randn(5, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3, 0])}
    ce = nn.functional.cross_entropy
    x = batch["image"].mean((2, 3))
    loss, _ = task.compute_loss(batch, "train")
    expected = ce(task.backbone.fc(x), batch["label"]) + 0.3 * ce(task.backbone.aux(x), batch["label"])
    torch.testing.assert_close(loss, expected)
    task.eval()
    loss, _ = task.compute_loss(batch, "val")
    torch.testing.assert_close(loss, ce(task.backbone.fc(x), batch["label"]))


def _optimizers(task: ClassificationTask, max_epochs: int = 10):
    trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False)
    task.trainer = trainer
    return task.configure_optimizers()


def test_sgd_with_lower_backbone_lr_and_plateau_schedule():
    task = _task(lr=0.1, momentum=0.9, weight_decay=1e-4, backbone_lr_scale=0.1, lr_scheduler="plateau",
                 lr_scheduler_kwargs={"patience": 2}, weight_decay_norm_and_bias=True)
    [optimizer], [plateau] = _optimizers(task)
    assert isinstance(optimizer, torch.optim.SGD)
    body, head = optimizer.param_groups
    assert body["lr"] == pytest.approx(0.01) and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in task.backbone.fc.parameters()}
    assert body["momentum"] == 0.9 and body["weight_decay"] == 1e-4
    assert plateau["monitor"] == "val/acc1" and plateau["scheduler"].mode == "max"
    assert plateau["scheduler"].factor == pytest.approx(0.1) and plateau["scheduler"].patience == 2


def test_linear_warmup_then_cosine():
    task = _task(optimizer="adamw", lr=1.0, lr_scheduler="cosine", warmup_steps=4, warmup_start_factor=0.25)
    [optimizer], [warmup, cosine] = _optimizers(task, max_epochs=10)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert warmup["interval"] == "step" and cosine["scheduler"].T_max == 10
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        warmup["scheduler"].step()
    assert lrs == pytest.approx([0.25, 0.4375, 0.625, 0.8125, 1.0])


def test_constant_warmup_like_resnet110():
    task = _task(lr=0.1, warmup_steps=3, warmup_start_factor=0.1, warmup_mode="constant")
    [optimizer], [warmup] = _optimizers(task)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        warmup["scheduler"].step()
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.1])


def test_bad_optimisation_settings_name_the_key():
    with pytest.raises(ValueError, match="model.init_args.optimizer"):
        _task(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr_scheduler_kwargs.*'step'"):
        _optimizers(_task(lr_scheduler="step", lr_scheduler_kwargs={"steps": 3}))
    with pytest.raises(ValueError, match="unfreeze_backbone_at_epoch needs freeze_backbone"):
        _task(unfreeze_backbone_at_epoch=2)


def _fit(task, classification_root, tmp_path, epochs: int):
    dm = ImageFolderDataModule(str(classification_root), image_size=32, batch_size=20, train_transforms="small")
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(task, dm)
    return trainer


def test_freeze_backbone_trains_only_the_classifier(classification_root, tmp_path):
    task = _task(freeze_backbone=True, lr=0.05)
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    _fit(task, classification_root, tmp_path, epochs=1)
    after = task.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BN running statistics are frozen too


def test_unfreeze_at_epoch_adds_the_backbone_at_a_lower_lr(classification_root, tmp_path):
    task = _task(freeze_backbone=True, unfreeze_backbone_at_epoch=1, backbone_lr_scale=0.1, lr=0.05)
    before = task.backbone.conv1.weight.clone()
    trainer = _fit(task, classification_root, tmp_path, epochs=2)
    groups = trainer.optimizers[0].param_groups  # the head's, then the backbone's, with and without decay
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    assert not torch.equal(before, task.backbone.conv1.weight)


def test_pretrained_weights_with_another_class_count(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="fc.weight.*another number of classes"):
        task = ClassificationTask(backbone="resnet18", num_classes=6, weights=str(path))
    torch.testing.assert_close(task.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert task.backbone.fc.out_features == 6


def test_checkpoint_from_another_task_or_class_count_is_refused(classification_root, tmp_path):
    task = _task()
    trainer = _fit(task, classification_root, tmp_path, epochs=1)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"cannot load into ClassificationTask.*overrides \{'num_classes': 3\}"):
        ClassificationTask.load_from_checkpoint(path, num_classes=3)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["densecnn"]["task"] = "FasterRCNNTask"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="saved by FasterRCNNTask, not ClassificationTask"):
        ClassificationTask.load_from_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        ClassificationTask.load_from_checkpoint(tmp_path / "missing.ckpt")
    torch.save(task.backbone.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint.*weights"):
        ClassificationTask.load_from_checkpoint(tmp_path / "plain.pth")


def test_num_classes_disagreeing_with_the_data(classification_root, tmp_path):
    from densecnn.data import DataError

    with pytest.raises(DataError, match="num_classes is 4 but the data at .* has 6 classes"):
        _fit(_task(num_classes=4), classification_root, tmp_path, epochs=1)


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*Did you mean.*Available: .*lenet5"):
        create_backbone("resnet19")


def test_predict_image_for_notebooks(classification_root):
    dm = ImageFolderDataModule(str(classification_root), image_size=32)
    task = _task(class_names=["disk", "square", "triangle", "cross", "ring", "bars"])
    import numpy as np
    out = task.predict_image(np.zeros((40, 40, 3), np.uint8), transform=dm.eval_transform)
    assert out["probs"].shape == (6,) and out["label_name"] in task.class_names and task.training
