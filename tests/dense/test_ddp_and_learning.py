"""Slow checks: depth + normals trained jointly under DDP with 2 CPU processes (test metrics identical to one
process), and a short learning run that must beat the trivial baselines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from densecnn.data.synthetic.dense import write_dense_dataset

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, targets, *, splits, size, epochs, devices=1, lr=0.001, batch_size=4, **trainer) -> Path:
    data_root = tmp_path / "rooms"
    if not data_root.exists():
        write_dense_dataset(data_root, height=size[0], width=size[1], splits=splits)
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": devices,
                    "default_root_dir": str(tmp_path / "runs"), "enable_progress_bar": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs")}}, **trainer},
        "model": {"class_path": "DensePredictionTask",
                  "init_args": {"backbone": "resnet18", "targets": targets, "num_classes": 5, "optimizer": "adamw",
                                "lr": lr, "weight_decay": 0.0001, "coarse_pool": [2, 3], "coarse_hidden": 128,
                                "coarse_channels": 16, "coarse_size": [6, 8], "scale2_image_channels": 32,
                                "scale2_widths": [32, 32], "scale3_image_channels": 32, "scale3_widths": [32],
                                "batch_norm": True, "lr_scheduler": "cosine"}},
        "data": {"class_path": "DenseDataModule",
                 "init_args": {"root": str(data_root), "image_size": list(size), "scale": [1.0, 1.1],
                               "rotation": 2.0, "batch_size": batch_size, "num_classes": 5}},
    }
    path = tmp_path / f"config_{devices}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "densecnn", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _latest_metrics(tmp_path: Path) -> dict:
    runs = sorted((tmp_path / "runs" / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return json.loads((runs[-1] / "metrics.json").read_text())


@pytest.mark.slow
def test_depth_and_normals_train_under_ddp_and_test_metrics_match_one_process(tmp_path):
    splits = {"train": 8, "val": 5, "test": 5}  # 5 test images over 2 ranks: uneven shards, no duplicates
    ddp = _config(tmp_path, ["depth", "normals"], splits=splits, size=(24, 32), epochs=2, devices=2, batch_size=2)
    _cli("fit", "--config", str(ddp), "--trainer.strategy", "ddp")
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    _cli("test", "--config", str(ddp), "--trainer.strategy", "ddp", "--ckpt_path", str(ckpt))
    with_ddp = _latest_metrics(tmp_path)
    single = _config(tmp_path, ["depth", "normals"], splits=splits, size=(24, 32), epochs=2, devices=1, batch_size=2)
    _cli("test", "--config", str(single), "--ckpt_path", str(ckpt))
    alone = _latest_metrics(tmp_path)
    keys = [k for k in alone if k.startswith(("test/depth/", "test/normals/"))]
    assert len(keys) == 15
    for key in keys:
        assert with_ddp[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-4), key
    # the losses too: sample-weighted means over all ranks (uneven shards: a mean of the ranks' means would differ)
    for key in ("test/loss_depth", "test/loss_normals", "test/loss"):
        assert with_ddp[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_multitask_learns_well_past_the_trivial_baselines(tmp_path):
    from tasks.datamodules.dense import DenseDataModule
    from tasks.dense import trivial_baselines

    config = _config(tmp_path, ["depth", "normals", "semantic"], splits={"train": 160, "val": 40, "test": 40},
                     size=(48, 64), epochs=8, lr=0.002, batch_size=8)
    _cli("fit", "--config", str(config))
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    _cli("test", "--config", str(config), "--ckpt_path", str(ckpt))
    got = {k.removeprefix("test/"): v for k, v in _latest_metrics(tmp_path).items()}
    dm = DenseDataModule(str(tmp_path / "rooms"), image_size=(48, 64), num_classes=5)
    dm.setup("test")
    base = trivial_baselines(dm.make_dataset("train", False), dm.test_set, ["depth", "normals", "semantic"], 5)
    print({k: (round(got[k], 3), round(base[k], 3)) for k in base})
    assert got["depth/rmse"] < 0.85 * base["depth/rmse"] and got["depth/delta1"] > base["depth/delta1"] + 0.1
    assert got["normals/mean"] < base["normals/mean"] - 15 and got["normals/within_30"] > base["normals/within_30"] + 0.2
    assert got["semantic/miou"] > 1.5 * base["semantic/miou"] and got["semantic/pixel_acc"] > base["semantic/pixel_acc"] + 0.05
