"""Each detector's fit/test/predict through the CLI (fast_dev_run), predictions loadable by pycocotools,
and the task-level options (frozen BN, trainable stages, FPN, SVMs, OverFeat's dense = cropped scores)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from tasks.cli import main as cli_main
from tests.helpers import QUICKSTART

DETECTORS = ["overfeat", "rcnn", "fast_rcnn", "faster_rcnn"]


def detection_args(name: str, root: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(QUICKSTART / f"{name}.yaml"), "--data.init_args.root", str(root),
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
            "--trainer.default_root_dir", str(run_dir), "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]


@pytest.mark.parametrize("name", DETECTORS)
def test_fit_test_predict_cli(name, coco_root, tmp_path):
    root = tmp_path / "data"  # a copy: proposal-based detectors cache selective search under the root
    shutil.copytree(coco_root, root)
    run = tmp_path / "run"
    cli_main(["fit", *detection_args(name, root, run, "--trainer.fast_dev_run", "2")])
    cli_main(["test", *detection_args(name, root, run, "--trainer.limit_test_batches", "1")])
    metrics = json.loads(next(run.rglob("metrics.json")).read_text())
    for key in ("test/map", "test/map_50", "test/map_75", "test/map_small", "test/map_voc07", "test/map_voc"):
        assert key in metrics
    # score threshold 0: even an untrained detector writes detections, so the results file is exercised
    cli_main(["predict", *detection_args(name, root, run, "--trainer.limit_predict_batches", "1",
                                         "--model.init_args.score_thresh", "0.0")])
    results = next(run.rglob("detections.json"))
    pictures = list(results.parent.glob("images/*.png"))
    assert len(pictures) == 4
    detections = json.loads(results.read_text())
    assert detections
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / "annotations" / "instances_test.json"))
        loaded = coco.loadRes(str(results))
    assert len(loaded.getAnnIds()) == len(detections)
    assert {d["category_id"] for d in detections} <= set(coco.getCatIds())
    assert {d["image_id"] for d in detections} <= set(coco.getImgIds())


def test_faster_rcnn_options():
    from tasks import FasterRCNNTask
    from torchvision.ops import FrozenBatchNorm2d

    task = FasterRCNNTask(backbone="resnet18", num_classes=2, frozen_bn=True, trainable_stages=3,
                          anchor_sizes=[32, 64, 128], box_head="last_stage")
    norms = [m for m in task.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms and any(isinstance(m, FrozenBatchNorm2d) for m in task.backbone.modules())
    assert not task.backbone.conv1.weight.requires_grad and not any(
        p.requires_grad for p in task.backbone.layer1.parameters())
    assert all(p.requires_grad for p in task.backbone.layer2.parameters())
    # the ResNet paper's layout: conv5_x is the RoI head
    assert task.detector.roi_heads.box_head.stage is task.backbone.layer4
    task.eval()
    with torch.no_grad():
        out = task.detect(torch.randn(1, 3, 96, 96), {})
    assert set(out[0]) == {"boxes", "scores", "labels"}
    fpn = FasterRCNNTask(backbone="resnet18", backbone_kwargs={"widths": [16, 32, 64, 128]}, num_classes=2,
                         fpn=True, fpn_channels=32, mlp_dim=64, anchor_sizes=[16, 32, 64, 128, 256])
    batch = {"image": torch.randn(2, 3, 96, 96),
             "target": [{"boxes": torch.tensor([[10., 10, 60, 70]]), "labels": torch.tensor([1])},
                        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]}
    losses = fpn.training_losses(batch)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    with pytest.raises(ValueError, match="one size per pyramid level"):
        FasterRCNNTask(backbone="resnet18", num_classes=2, fpn=True, anchor_sizes=[32, 64])
    with pytest.raises(ValueError, match="trainable_stages"):
        FasterRCNNTask(backbone="resnet18", num_classes=2, trainable_stages=9)


def test_rcnn_svm_and_context():
    from tasks import RCNNTask

    task = RCNNTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=2, crop_size=32, context=4,
                    classifier="svm", rois_per_image=16)
    batch = {"image": torch.randn(1, 3, 64, 64),
             "target": [{"boxes": torch.tensor([[5., 5, 30, 30]]), "labels": torch.tensor([2])}],
             "proposals": [torch.tensor([[4., 4, 31, 29], [40, 40, 60, 60], [0, 0, 64, 64]])]}
    losses = task.training_losses(batch)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_svm"} and losses["loss_svm"] > 0
    task.eval()
    with torch.no_grad():
        scores, _ = task.region_scores(task.region_features(batch["image"], batch["proposals"]))
    assert scores.shape == (3, 3) and (scores[:, 0] == 0).all()  # SVM margins, no background column
    with pytest.raises(ValueError, match="needs region proposals"):
        task.detect(batch["image"], {"image": batch["image"]})


def test_overfeat_dense_scores_equal_cropped_windows():
    """The convolutional evaluation over a whole image gives each window the score the classifier gives the
    cropped window (an unpadded backbone: LeNet-5)."""
    from tasks import OverFeatTask

    torch.manual_seed(0)
    task = OverFeatTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=3, window=32,
                        hidden_dim=32).eval()
    image = torch.randn(1, 3, 56, 64)
    with torch.no_grad():
        logits, deltas = task.score_maps(image)
        rows, cols = logits.shape[-2:]
        windows = task.window_boxes(rows, cols).long()
        crops = torch.stack([image[0, :, y0:y1, x0:x1] for x0, y0, x1, y1 in windows.tolist()])
        crop_logits, crop_deltas = task.score_windows(crops)
    assert (rows, cols) == ((56 - 32) // 4 + 1, (64 - 32) // 4 + 1)
    torch.testing.assert_close(crop_logits, logits[0].flatten(1).T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(crop_deltas, deltas[0].flatten(1).T, rtol=1e-4, atol=1e-5)


def test_overfeat_trains_on_the_windows_it_scores():
    """Training samples windows of the same pyramid maps detection scores: every scale contributes windows
    (in the original image's pixels), and an image smaller than one window at every scale is named."""
    from tasks import OverFeatTask

    torch.manual_seed(0)
    task = OverFeatTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=3, window=32,
                        scales=[0.5, 1.0, 2.0], window_ratios=[1.0], hidden_dim=16, dropout=0.0)
    images = torch.randn(2, 3, 64, 64)
    logits, deltas, windows = task.pyramid_windows(images)
    per_scale = [((64 * f - 32) // 4 + 1) ** 2 for f in (0.5, 1.0, 2.0)]  # 32 px at 0.5: one window
    assert logits.shape == (2, sum(per_scale), 4) and deltas.shape == (2, sum(per_scale), 12)
    sides = (windows[:, 2] - windows[:, 0]).unique().tolist()
    assert sorted(sides) == [16.0, 32.0, 64.0]  # 32 px windows at 2x, 1x and 0.5x
    batch = {"image": images, "target": [{"boxes": torch.tensor([[8., 8, 40, 40]]), "labels": torch.tensor([1])},
                                         {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]}
    losses = task.training_losses(batch)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and losses["loss_box_reg"] > 0
    sum(losses.values()).backward()
    assert task.head.fc6.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="smaller than one 32 px window"):
        task.pyramid_windows(torch.randn(1, 3, 12, 12))  # 24 px even at 2x


def test_predict_image_for_notebooks(coco_root):
    """``predict_image`` on a raw image, with selective search for a proposal-based detector."""
    from densecnn.data import read_rgb
    from densecnn.data.detection import build_detection_pipeline
    from tasks import FastRCNNTask

    task = FastRCNNTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=3, feature_index=1,
                        roi_op="align", hidden_dim=32, score_thresh=0.0)
    image = read_rgb(next((coco_root / "test").glob("*.png")))
    out = task.predict_image(image, build_detection_pipeline(192, train=False))  # enlarged x2, mapped back
    assert set(out) == {"boxes", "scores", "labels"} and len(out["boxes"]) > 0
    assert out["boxes"][:, 2].max() <= image.shape[1] + 1e-3 and out["boxes"][:, 3].max() <= image.shape[0] + 1e-3


def test_selective_search_names_the_missing_package(monkeypatch):
    import cv2

    from densecnn.data.detection import selective_search

    monkeypatch.delattr(cv2, "ximgproc")
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        selective_search(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("name", ["faster_rcnn", "overfeat"])
def test_two_fits_give_identical_weights_for_any_num_workers(name, coco_root, tmp_path):
    """Bbox-aware augmentation (scale, crop, flip), the RPN's / OverFeat's region sampling: all seeded."""
    weights = []
    for workers in ("0", "2"):
        run = cli_main(["fit", *detection_args(name, coco_root, tmp_path / workers, "--trainer.max_epochs", "1",
                                               "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches",
                                               "1", "--data.init_args.num_workers", workers)])
        weights.append(run.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
