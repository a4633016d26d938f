"""Helpers for the video tests."""
from __future__ import annotations

from pathlib import Path

from tests.helpers import QUICKSTART

# Small enough for CPU smoke runs: 6 classes x (4 train + 2 test) videos of 12 frames at 32x44.
TINY = {"videos_per_class": {"train": 4, "test": 2}, "num_frames": 12, "frame_size": (32, 44)}


def video_cli_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """Arguments for a fast CLI run of the video quickstart on the tiny data (8-frame 28x28 clips)."""
    return ["--config", str(QUICKSTART / "video.yaml"), "--data.init_args.root", str(root),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
            "--data.init_args.resize", "[32, 44]", "--data.init_args.crop_size", "28",
            "--data.init_args.clip_len", "8", "--data.init_args.clips_per_video", "2",
            "--model.init_args.clip_len", "8", "--model.init_args.crop_size", "28",
            "--trainer.default_root_dir", str(run_dir), "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]
