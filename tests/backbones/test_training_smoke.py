"""Every family trains through ``ClassificationTask`` on the CPU: a few SGD steps on tiny random images
(GoogLeNet's auxiliary losses included), finite loss, and the first layer's weights move."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tasks import ClassificationTask


def case(name: str, input_size: tuple[int, ...], slow: bool = False, **kwargs):
    return pytest.param(name, input_size, kwargs, id=name, marks=[pytest.mark.slow] if slow else [])


# one member of each family, at the smallest input its pooling allows
FAMILIES = [
    case("lenet5", (1, 32, 32)),
    case("jarrett", (1, 64, 64), stages=1),  # two valid 9x9 stages with the paper's pools need 143x143
    case("alexnet", (3, 127, 127)),
    case("zfnet", (3, 96, 96)),
    case("vgg11_lrn_bn", (3, 32, 32), slow=True),  # 124M FC parameters: slow SGD steps on a CPU
    case("nin_cifar", (3, 32, 32)),
    case("allcnn_c", (3, 32, 32)),
    case("googlenet", (3, 96, 96)),
    case("googlenet_torchvision", (3, 96, 96)),
    case("bn_inception", (3, 64, 64)),
    case("resnet18", (3, 64, 64), shortcut="C"),
    case("plain_resnet18", (3, 64, 64)),
    case("cifar_resnet20", (3, 32, 32)),
    case("timm:resnet10t", (3, 64, 64)),
]


def _loader(input_size, num_classes=4, n=8):
    torch.manual_seed(0)
    samples = [{"image": torch.randn(*input_size), "label": torch.tensor(i % num_classes)} for i in range(n)]
    return DataLoader(samples, batch_size=4)


@pytest.mark.parametrize("name, input_size, kwargs", FAMILIES)
def test_family_trains_a_few_steps(name, input_size, kwargs, tmp_path):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    task = ClassificationTask(backbone=name, num_classes=4, backbone_kwargs=kwargs or None, lr=0.01)
    first = next(p for p in task.backbone.parameters() if p.dim() > 1)
    before = first.detach().clone()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(task, train_dataloaders=_loader(input_size))
    loss = float(trainer.callback_metrics["train/loss"])
    assert math.isfinite(loss) and loss > 0
    assert not torch.equal(first.detach(), before), "the backbone did not train"
    task.eval()
    with torch.no_grad():
        logits = task.backbone(torch.randn(2, *input_size))
    assert logits.shape == (2, 4)  # eval mode: logits alone, no auxiliary outputs
