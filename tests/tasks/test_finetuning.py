"""Fine-tuning: ``freeze_backbone`` freezes every backbone parameter outside the head (for every backbone
family), ``unfreeze_backbone_at_epoch`` releases them with batch norm training again, and a run resumed past
the release continues with the backbone in the optimizer exactly once."""
from __future__ import annotations

from collections import Counter

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

import densecnn
from densecnn.backbones import get_entry
from tasks import ClassificationTask, FreezeBackbone, VideoClassificationTask

# one backbone per family module (test_every_family_has_a_representative keeps this list complete)
IMAGE = ["alexnet", "allcnn_c", "googlenet", "resnet18", "jarrett", "lenet5", "nin_cifar", "vgg11_bn", "zfnet"]
VIDEO = ["c3d", "inflated_resnet18", "r3d_18"]
TIMM = ["timm:vit_tiny_patch16_224", "timm:convnext_atto"]


def _family(name: str) -> str:
    return get_entry(name).builder.__module__


def test_every_family_has_a_representative():
    assert {_family(n) for n in densecnn.list_backbones()} == {_family(n) for n in IMAGE + VIDEO}


def _task(name: str, **kwargs):
    kwargs = {"num_classes": 3, "freeze_backbone": True, "unfreeze_backbone_at_epoch": 1, **kwargs}
    if name in VIDEO:
        return VideoClassificationTask(backbone=name, clip_len=8, crop_size=32, **kwargs)
    return ClassificationTask(backbone=name, **kwargs)


def _optimizer_ids(optimizer) -> Counter:
    return Counter(id(p) for group in optimizer.param_groups for p in group["params"])


@pytest.mark.parametrize("name", IMAGE + VIDEO + TIMM)
def test_freeze_covers_every_backbone_parameter_and_release_adds_each_once(name):
    task = _task(name, backbone_lr_scale=0.1, lr=0.02)
    head = {id(p) for m in task.head_modules() for p in m.parameters()}
    named = dict(task.backbone.named_parameters())
    body = {n for n, p in named.items() if id(p) not in head}
    n_head = sum(1 for m in task.head_modules() for _ in m.named_parameters())
    assert len(body) == len(named) - n_head and n_head > 0

    callback = FreezeBackbone(1, 0.1)
    callback.freeze_before_training(task)
    frozen = {n for n, p in named.items() if not p.requires_grad}
    assert frozen == body  # non-leaf owners too: Jarrett's gains, ViT's pos_embed/cls_token, ConvNeXt's gamma
    assert all(p.requires_grad for m in task.head_modules() for p in m.parameters())

    [optimizer], _ = task.configure_optimizers()
    assert set(_optimizer_ids(optimizer)) == head
    callback.finetune_function(task, 0, optimizer)
    assert {n for n, p in named.items() if not p.requires_grad} == body

    callback.finetune_function(task, 1, optimizer)
    callback.finetune_function(task, 2, optimizer)  # later epochs add nothing again
    assert all(p.requires_grad for p in task.parameters())
    ids = _optimizer_ids(optimizer)
    assert set(ids) == {id(p) for p in task.parameters()} and set(ids.values()) == {1}
    added = optimizer.param_groups[len(optimizer.param_groups) - 2:]
    assert [g["lr"] for g in added] == pytest.approx([0.002, 0.002])
    no_decay = {id(p) for g in added if g["weight_decay"] == 0 for p in g["params"]}
    expected = {id(p) for n, p in named.items()
                if n in body and (p.ndim <= 1 or n.endswith((".pos_embed", ".cls_token")))}
    assert no_decay == expected and all(g["weight_decay"] == task.hparams.weight_decay
                                        for g in added if id(g["params"][0]) not in no_decay)


# ---- real runs -----------------------------------------------------------------------------------------------
def _loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader([{"image": images[i], "label": labels[i]} for i in range(n)], batch_size=4)


def _fit(task, tmp_path, max_epochs: int, callbacks=(), ckpt_path=None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                         callbacks=list(callbacks))
    trainer.fit(task, _loader(12, 0), _loader(4, 1), ckpt_path=ckpt_path)
    return trainer


class _Recorder(Callback):
    """Per epoch: batch-norm modes and requires_grad seen by the training steps, the optimizer's parameter
    counts, and the backbone's state at the end of the epoch."""

    def __init__(self):
        self.bn_training, self.trainable, self.optimizer_ids, self.state = {}, {}, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        epoch = trainer.current_epoch
        bns = [m for m in pl_module.backbone.modules() if isinstance(m, _BatchNorm)]
        self.bn_training.setdefault(epoch, set()).update(m.training for m in bns)
        self.trainable.setdefault(epoch, set()).update(p.requires_grad for p in pl_module.parameters())
        self.optimizer_ids[epoch] = _optimizer_ids(trainer.optimizers[0])

    def on_train_epoch_end(self, trainer, pl_module):
        self.state[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_fit_freezes_then_trains_the_backbone_with_batch_norm_in_train_mode(tmp_path):
    pl.seed_everything(0)
    task = _task("cifar_resnet20", lr=0.05)
    initial = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    recorder = _Recorder()
    _fit(task, tmp_path, 3, [recorder])
    assert recorder.bn_training == {0: {False}, 1: {True}, 2: {True}}
    assert recorder.trainable == {0: {False, True}, 1: {True}, 2: {True}}
    assert _changed(initial, recorder.state[0]) == {"fc.weight", "fc.bias"}  # BN running statistics included
    changed = _changed(recorder.state[0], recorder.state[1])
    assert "conv1.weight" in changed and "bn1.running_mean" in changed and "layer3.2.bn2.weight" in changed
    ids = recorder.optimizer_ids[2]
    assert set(ids) == {id(p) for p in task.parameters()} and set(ids.values()) == {1}


def test_resume_past_the_release_keeps_the_backbone_trainable_and_in_the_optimizer_once(tmp_path):
    pl.seed_everything(0)
    uninterrupted = _task("cifar_resnet20", lr=0.05)
    _fit(uninterrupted, tmp_path / "full", 3)

    pl.seed_everything(0)
    first = _task("cifar_resnet20", lr=0.05)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    _fit(first, tmp_path / "a", 2, [checkpoints])
    assert (tmp_path / "ckpt" / "epoch=1.ckpt").is_file()

    resumed = _task("cifar_resnet20", lr=0.05)
    recorder = _Recorder()
    trainer = _fit(resumed, tmp_path / "b", 3, [recorder], ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert list(recorder.bn_training) == [2] and recorder.bn_training[2] == {True}
    assert recorder.trainable[2] == {True}
    ids = recorder.optimizer_ids[2]
    assert set(ids) == {id(p) for p in resumed.parameters()} and set(ids.values()) == {1}
    assert len(trainer.optimizers[0].param_groups) == 4  # head and body, each with and without weight decay
    for (name, expected), actual in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)


def test_resume_mid_epoch_restores_the_released_state(tmp_path):
    # a checkpoint after global step 5: epoch 1 (released), batch 1 of 3; that epoch's start hook is not rerun
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=5,
                                  save_top_k=-1)
    _fit(_task("cifar_resnet20", lr=0.05), tmp_path / "a", 2, [checkpoints])
    resumed = _task("cifar_resnet20", lr=0.05)
    recorder = _Recorder()
    _fit(resumed, tmp_path / "b", 2, [recorder], ckpt_path=tmp_path / "ckpt" / "step=5.ckpt")
    assert recorder.bn_training == {1: {True}} and recorder.trainable == {1: {True}}
    ids = recorder.optimizer_ids[1]
    assert set(ids) == {id(p) for p in resumed.parameters()} and set(ids.values()) == {1}
