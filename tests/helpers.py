"""Helpers for tests: CLI arguments for fast runs and running commands in a fresh interpreter."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from pytorch_lightning import Callback

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart"


def classification_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """CLI arguments for a fast run of the classification quickstart on ``root``."""
    return ["--config", str(QUICKSTART / "classification.yaml"), "--data.init_args.root", str(root),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16",
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "1",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def run_fresh(args: list[str], timeout: int = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in a new interpreter (nothing cached from this test process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


class SlowTraining(Callback):
    """Sleeps after every training batch: widens the window in which a test kills a run mid-epoch."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


def densecnn_command(subcommand: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "densecnn", subcommand, *args]


def fit_killed_mid_run(args: list[str], watch: Path, after_step: int, timeout: float = 300,
                       cwd: Path = REPO) -> Path:
    """Start ``python -m densecnn fit args``, SIGKILL it as soon as a ``last.ckpt`` under ``watch`` holds at least
    ``after_step`` optimizer steps, and return a copy of that checkpoint as it was at the kill."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(densecnn_command("fit", args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the run ended before it could be killed: {process.stderr.read()[-3000:]}")
            for path in watch.rglob("last.ckpt"):
                try:
                    step = torch.load(path, map_location="cpu", weights_only=True)["global_step"]
                except Exception:  # noqa: BLE001  (being replaced right now: look again)
                    continue
                if step >= after_step:
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=30)
                    copy = path.with_name("at_kill.ckpt.bak")
                    shutil.copyfile(path, copy)
                    return copy
            time.sleep(0.02)
        raise AssertionError(f"no last.ckpt with {after_step} steps under {watch} within {timeout} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class OwnWorkingDirPerRank(Callback):
    """Moves every rank but zero into a working directory of its own at setup: with a relative run root, what a
    rank writes there lands on "its own disk", as on a cluster without a shared filesystem."""

    def __init__(self, root: str):
        self.root = root

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank > 0:
            own = Path(self.root) / f"rank{trainer.global_rank}"
            own.mkdir(parents=True, exist_ok=True)
            os.chdir(own)


class SaveWeightsPerRank(Callback):
    """At the end of training, every rank saves its own weights to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), Path(self.folder) / f"rank{trainer.global_rank}.pt")


def tiny_dense_config(tmp_path: Path) -> Path:
    """A one-epoch LeNet-scale depth + semantic config on freshly written synthetic rooms (the export and
    explain command tests)."""
    from densecnn.data.synthetic.dense import write_dense_dataset

    root = write_dense_dataset(tmp_path / "rooms", height=32, width=40, splits={"train": 2, "val": 1, "test": 3})
    config = {"seed_everything": 0,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path / "run"),
                          "enable_progress_bar": False, "enable_model_summary": False},
              "model": {"class_path": "DensePredictionTask",
                        "init_args": {"backbone": "lenet5", "backbone_kwargs": {"in_chans": 3},
                                      "targets": ["depth", "semantic"], "num_classes": 5, "coarse_pool": [1, 1],
                                      "coarse_hidden": 16, "coarse_channels": 4, "coarse_size": [3, 4],
                                      "scale2_image_channels": 4, "scale2_widths": [4], "scale3_image_channels": 4,
                                      "scale3_widths": [4], "optimizer": "adamw", "lr": 0.001}},
              "data": {"class_path": "DenseDataModule",
                       "init_args": {"root": str(root), "image_size": [32, 40], "batch_size": 2, "num_classes": 5,
                                     "num_workers": 0}}}
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_faster_rcnn_args(tmp_path: Path) -> list[str]:
    """The quickstart Faster R-CNN at a small width on 8 freshly written 64-px synthetic images (the export and
    explain command tests): the config arguments, without a run directory."""
    from densecnn.data.synthetic.detection import write_detection_dataset

    root = tmp_path / "shapes"
    write_detection_dataset(root, image_size=64, splits={"train": 4, "val": 2, "test": 2})
    return ["--config", str(QUICKSTART / "faster_rcnn.yaml"), "--data.init_args.root", str(root),
            "--data.init_args.synthetic", "false", "--data.init_args.image_size", "64",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
            "--model.init_args.backbone_kwargs", "{widths: [8, 16, 32, 64]}", "--model.init_args.mlp_dim", "32",
            "--trainer.accelerator", "cpu"]
