"""Slow checks: DDP on CPU (2 processes, gloo) evaluates exactly like one process, and each detector learns
the synthetic shapes far above chance (a random detector's AP50 is about 0)."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.detection.test_tasks import detection_args
from tests.helpers import run_fresh


def _metrics(run_dir) -> dict:
    return json.loads(next(run_dir.rglob("metrics.json")).read_text())


@pytest.mark.slow
def test_ddp_two_processes_match_one(coco_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(coco_root, root)
    fit_dir = tmp_path / "fit"
    fit = run_fresh(["-m", "densecnn", "fit", *detection_args(
        "faster_rcnn", root, fit_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.devices", "2", "--trainer.strategy", "ddp")])
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = next(fit_dir.rglob("last.ckpt"))
    results = {}
    for devices in ("1", "2"):
        run_dir = tmp_path / f"test{devices}"
        extra = ["--trainer.devices", devices, "--model.init_args.score_thresh", "0.0"]
        if devices == "2":
            extra += ["--trainer.strategy", "ddp"]
        test = run_fresh(["-m", "densecnn", "test", *detection_args("faster_rcnn", root, run_dir, *extra),
                          "--ckpt_path", str(checkpoint)])
        assert test.returncode == 0, test.stderr[-3000:]
        results[devices] = _metrics(run_dir)
    assert results["1"]["test/mar_100"] > 0  # detections that hit something, so the comparison means something
    for key in ("test/map", "test/map_50", "test/mar_100", "test/map_voc07", "test/map_voc"):
        assert results["2"][key] == pytest.approx(results["1"][key], abs=1e-6), key


# detector -> (epochs on 120 training images, AP50 it must exceed on the validation split), with the
# quickstarts' half-width ResNet-18. The 240-image quickstarts reach test AP50 0.69 (OverFeat), 0.95 (R-CNN),
# 0.93 (Fast R-CNN) and 0.84 (Faster R-CNN); a detector guessing boxes scores about 0.
LEARNING = {
    "overfeat": (12, 0.3),
    "rcnn": (8, 0.5),
    "fast_rcnn": (10, 0.5),
    "faster_rcnn": (12, 0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEARNING))
def test_detector_learns_the_shapes(name, tmp_path):
    from densecnn.data.synthetic.detection import write_detection_dataset

    epochs, threshold = LEARNING[name]
    root = write_detection_dataset(tmp_path / "data", image_size=96, splits={"train": 120, "val": 30})
    run_dir = tmp_path / "run"
    fit = run_fresh(["-m", "densecnn", "fit", *detection_args(name, root, run_dir, "--data.init_args.batch_size", "8",
                                                             "--trainer.max_epochs", str(epochs))],
                    timeout=1800)
    assert fit.returncode == 0, fit.stderr[-3000:]
    validate = run_fresh(["-m", "densecnn", "validate", *detection_args(name, root, tmp_path / "val"),
                          "--ckpt_path", str(next(run_dir.rglob("last.ckpt")))])
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert _metrics(tmp_path / "val")["val/map_50"] > threshold
