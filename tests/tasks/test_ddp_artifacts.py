"""DDP (2 CPU processes, gloo) where ranks share no filesystem and one rank has no evaluation sample: the run
does not hang, and rank zero ends up with every prediction and its files."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from densecnn.data.synthetic.dense import write_dense_dataset
from tests.helpers import REPO

SMALL_HEAD = {"coarse_pool": [2, 2], "coarse_hidden": 32, "coarse_channels": 8, "coarse_size": [6, 8],
              "scale2_image_channels": 8, "scale2_widths": [8, 8], "scale3_image_channels": 8, "scale3_widths": [8]}


def densecnn(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "densecnn", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)  # a hang fails here instead of blocking the suite
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_ddp_with_an_empty_rank_and_no_shared_filesystem(tmp_path):
    data = tmp_path / "rooms"
    # validation: 1 image for 2 ranks (rank 1 gets none); predict: the 3 test images
    write_dense_dataset(data, height=24, width=32, splits={"train": 4, "val": 1, "test": 3})
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                    "default_root_dir": "runs", "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
                    "callbacks": [{"class_path": "tests.helpers.OwnWorkingDirPerRank",
                                   "init_args": {"root": str(tmp_path / "other_disks")}}]},
        "model": {"class_path": "DensePredictionTask",
                  "init_args": {"backbone": "cifar_resnet20", "targets": ["depth"], "optimizer": "adamw",
                                "lr": 0.001, **SMALL_HEAD}},
        "data": {"class_path": "DenseDataModule",
                 "init_args": {"root": str(data), "image_size": [24, 32], "batch_size": 2}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    densecnn(tmp_path, "fit", "--config", "config.yaml")  # validation on 1 image: rank 1 has none
    (run,) = (tmp_path / "runs" / "lightning_logs").glob("version_*")
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    densecnn(tmp_path, "validate", "--config", "config.yaml", "--ckpt_path", str(checkpoint))
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["val/depth/rmse"] > 0

    densecnn(tmp_path, "predict", "--config", "config.yaml", "--ckpt_path", str(checkpoint))
    (out,) = [p for p in (tmp_path / "runs").rglob("predictions") if p.is_dir()]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["name"] for r in rows) == ["test_00000", "test_00001", "test_00002"]
    for row in rows:  # rank 1's maps were sent over, not left on its own disk
        assert (out / row["depth"]).is_file() and (out / row["depth_colour"]).is_file()
    assert not list((tmp_path / "other_disks").rglob("*.png"))
    assert not list((tmp_path / "other_disks").rglob("predictions.csv"))
