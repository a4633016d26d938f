"""Helpers for tests: CLI arguments for fast runs and running commands in a fresh interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
