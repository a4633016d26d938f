"""DDP on CPU (gloo, 2 processes): the quickstart trains, and evaluation is not skewed by sampler padding."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.utils.data import DistributedSampler

from tasks.datamodules.base import EvalDistributedSampler
from tests.helpers import classification_args, run_fresh

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def test_evaluation_sampler_visits_every_sample_exactly_once():
    dataset = list(range(23))
    padded = [i for rank in range(2) for i in DistributedSampler(dataset, 2, rank, shuffle=False)]
    exact = [i for rank in range(2) for i in EvalDistributedSampler(dataset, 2, rank)]
    assert len(padded) == 24  # Lightning's default would count one sample twice
    assert sorted(exact) == dataset
    # fewer samples than ranks: the empty rank iterates over nothing but reports one batch, so that it runs
    # the evaluation loop (and its epoch-end synchronisation) with the others
    empty = EvalDistributedSampler([0], 2, 1)
    assert list(empty) == [] and len(empty) == 1


@pytest.mark.slow
def test_quickstart_trains_under_ddp_and_validation_matches_one_process(classification_root, tmp_path):
    # an odd-sized validation split: 23 images for 2 processes
    root = tmp_path / "data"
    shutil.copytree(classification_root, root)
    next((root / "val" / "disk").iterdir()).unlink()

    fit = run_fresh(["-m", "densecnn", "fit", *classification_args(root, tmp_path / "ddp"), *DDP])
    assert fit.returncode == 0, fit.stderr[-4000:]
    best = next((tmp_path / "ddp").rglob("best-*.ckpt"))
    assert (best.parent / "last.ckpt").is_file()

    metrics = {}
    for name, extra in (("single", ["--trainer.devices", "1"]), ("ddp", DDP)):
        run = run_fresh(["-m", "densecnn", "validate", *classification_args(root, tmp_path / name),
                         "--ckpt_path", str(best), *extra])
        assert run.returncode == 0, run.stderr[-4000:]
        metrics[name] = json.loads(next((tmp_path / name).rglob("metrics.json")).read_text())
    assert 0.0 < metrics["single"]["val/acc1"] < 1.0  # otherwise padding could not change it
    assert metrics["ddp"]["val/acc1"] == pytest.approx(metrics["single"]["val/acc1"], abs=1e-6)
    assert metrics["ddp"]["val/loss"] == pytest.approx(metrics["single"]["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_a_backbone_released_under_ddp_trains_in_sync_on_every_rank(classification_root, tmp_path):
    """DDP averages only the gradients of parameters that required grad when it wrapped the model: without
    re-registering the released backbone, each rank would train its own copy."""
    save = json.dumps([{"class_path": "tests.helpers.SaveWeightsPerRank", "init_args": {"folder": str(tmp_path / "w")}}])
    fit = run_fresh(["-m", "densecnn", "fit", *classification_args(classification_root, tmp_path, "--trainer.max_epochs",
                                                                    "2"), *DDP, "--model.init_args.freeze_backbone", "true",
                     "--model.init_args.unfreeze_backbone_at_epoch", "1", "--trainer.callbacks", save])
    assert fit.returncode == 0, fit.stderr[-4000:]
    ranks = [torch.load(tmp_path / "w" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    first_conv = "backbone.conv1.weight"
    assert first_conv in ranks[0]
    differing = [k for k in ranks[0] if ranks[0][k].is_floating_point() and not torch.equal(ranks[0][k], ranks[1][k])]
    assert not differing, differing[:5]
