"""DDP on CPU (gloo, 2 processes): the video quickstart trains and its video accuracy matches one process."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers import run_fresh
from tests.video.helpers import video_cli_args

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.mark.slow
def test_video_quickstart_trains_under_ddp_and_evaluation_matches_one_process(video_root, tmp_path):
    # 11 test videos for 2 processes: an uneven split, where sampler padding would double-count one
    root = tmp_path / "data"
    shutil.copytree(video_root, root)
    lines = (root / "testlist01.txt").read_text().splitlines()
    (root / "testlist01.txt").write_text("\n".join(lines[:-1]) + "\n")

    fit = run_fresh(["-m", "densecnn", "fit", *video_cli_args(root, tmp_path / "ddp", "--trainer.max_epochs", "1"),
                     *DDP])
    assert fit.returncode == 0, fit.stderr[-4000:]
    last = next((tmp_path / "ddp").rglob("last.ckpt"))

    metrics = {}
    for name, extra in (("single", ["--trainer.devices", "1"]), ("ddp", DDP)):
        run = run_fresh(["-m", "densecnn", "test", *video_cli_args(root, tmp_path / name), "--ckpt_path", str(last),
                         *extra])
        assert run.returncode == 0, run.stderr[-4000:]
        metrics[name] = json.loads(next((tmp_path / name).rglob("metrics.json")).read_text())
    for key in ("test/video_acc1_2clips_1crop", "test/clip_acc1", "test/loss"):
        assert metrics["ddp"][key] == pytest.approx(metrics["single"][key], abs=1e-5), key
    predict = run_fresh(["-m", "densecnn", "predict", *video_cli_args(root, tmp_path / "pred"), "--ckpt_path",
                         str(last), *DDP])
    assert predict.returncode == 0, predict.stderr[-4000:]
    rows = next((tmp_path / "pred").rglob("predictions.csv")).read_text().splitlines()
    assert len(rows) == 1 + 11  # header + every test video once
