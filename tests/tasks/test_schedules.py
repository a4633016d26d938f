"""Optimizer groups and learning-rate schedules of ``BaseTask``: weight decay only where it regularises, cosine
over the whole run (epoch- or step-bounded, after warm-up), and backbone groups added at the release that
follow the schedule."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from tasks import ClassificationTask

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


@pytest.mark.parametrize("name", ["resnet18", "timm:vit_tiny_patch16_224"])
def test_no_weight_decay_on_norms_biases_and_declared_tokens(name):
    task = ClassificationTask(backbone=name, num_classes=3, lr=0.1, backbone_lr_scale=0.1, weight_decay=0.05)
    [optimizer], _ = task.configure_optimizers()
    names = {id(p): n for n, p in task.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    classifier = task.backbone.classifier_name
    head = {f"backbone.{classifier}.{n}" for n, _ in task.backbone.get_classifier().named_parameters()}
    body = set(names.values()) - head
    exempt = {n for n, p in task.named_parameters() if p.ndim <= 1 or n.endswith((".pos_embed", ".cls_token"))}
    assert ("backbone.body.model.pos_embed" in exempt) == name.startswith("timm:")  # timm's no_weight_decay()
    expected = [(0.01, 0.05, body - exempt), (0.01, 0.0, body & exempt), (0.1, 0.05, head - exempt),
                (0.1, 0.0, head & exempt)]
    assert [(pytest.approx(lr), wd, ps) for lr, wd, ps in expected] == groups

    task = ClassificationTask(backbone=name, num_classes=3, lr=0.1, backbone_lr_scale=0.1, weight_decay=0.05,
                              weight_decay_norm_and_bias=True)
    [optimizer], _ = task.configure_optimizers()
    names = {id(p): n for n, p in task.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    assert groups == [(pytest.approx(0.01), 0.05, body), (pytest.approx(0.1), 0.05, head)]


# ---- schedules in real runs: 4 batches per epoch ----------------------------------------------------------
class _LRs(Callback):
    """The learning rate of every group for each optimizer step (read before the step)."""

    def __init__(self):
        self.steps: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def _fit(task, tmp_path, **trainer_kwargs) -> tuple[list[list[float]], list[float]]:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 3, (16,), generator=g)
    loader = DataLoader([{"image": images[i], "label": labels[i]} for i in range(16)], batch_size=4)
    recorder = _LRs()
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                         **trainer_kwargs)
    trainer.fit(task, loader)
    return recorder.steps, [g["lr"] for g in trainer.optimizers[0].param_groups]


def _task(**kwargs) -> ClassificationTask:
    return ClassificationTask(backbone="cifar_resnet20", num_classes=3, optimizer="sgd", momentum=0.0, lr=1.0,
                              lr_scheduler="cosine", **kwargs)


def _cosine(step: int, length: int, eta_min: float = 0.0, base: float = 1.0) -> float:
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * step / length)) / 2


def test_cosine_bounded_by_max_steps_spans_the_run(tmp_path):
    steps, final = _fit(_task(backbone_lr_scale=0.1, lr_scheduler_kwargs={"eta_min": 0.05}), tmp_path,
                        max_steps=20, max_epochs=-1)
    assert len(steps) == 20
    for s, lrs in enumerate(steps + [final]):
        body, head = _cosine(s, 20, 0.05, 0.1), _cosine(s, 20, 0.05)
        assert lrs == pytest.approx([body] * 2 + [head] * 2, abs=1e-6), s
    assert final == pytest.approx([0.05] * 4, abs=1e-6)


def test_linear_warmup_then_cosine_over_the_remaining_steps(tmp_path):
    steps, final = _fit(_task(warmup_steps=5, warmup_start_factor=0.1), tmp_path, max_steps=20)
    expected = [0.1 + 0.9 * s / 5 if s < 5 else _cosine(s - 5, 15) for s in range(21)]
    assert [lrs[-1] for lrs in steps + [final]] == pytest.approx(expected, abs=1e-6)


def test_epoch_cosine_over_max_epochs_times_a_step_warmup(tmp_path):
    steps, final = _fit(_task(warmup_steps=2, warmup_start_factor=0.5), tmp_path, max_epochs=5)
    expected = [(0.5 + 0.25 * min(s, 2)) * _cosine(s // 4, 5) for s in range(21)]
    assert [lrs[-1] for lrs in steps + [final]] == pytest.approx(expected, abs=1e-6)


def test_released_backbone_follows_warmup_and_cosine(tmp_path):
    # the release at epoch 1 (step 4) falls inside the 6-step warm-up; SequentialLR switches to the cosine at 6
    task = _task(freeze_backbone=True, unfreeze_backbone_at_epoch=1, backbone_lr_scale=0.1, warmup_steps=6,
                 warmup_start_factor=0.1)
    steps, final = _fit(task, tmp_path, max_steps=20)
    head = [0.1 + 0.9 * s / 6 if s < 6 else _cosine(s - 6, 14) for s in range(21)]
    assert [len(lrs) for lrs in steps] == [2] * 4 + [4] * 16
    for s, lrs in enumerate(steps + [final]):
        expected = [head[s]] * 2 + ([0.1 * head[s]] * 2 if s >= 4 else [])
        assert lrs == pytest.approx(expected, abs=1e-6), s


def test_cosine_needs_a_run_of_known_length(tmp_path):
    with pytest.raises(ValueError, match="cosine needs a run of known length"):
        _fit(_task(), tmp_path, max_epochs=-1, max_time="00:00:00:05")
