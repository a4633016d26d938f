"""VideoClassificationTask: CLI fit/test/predict, metric names, predictions, feature protocol, bad config."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from densecnn.data import DataError
from tasks import VideoClassificationTask
from tasks.cli import main as cli_main
from tasks.datamodules.video import VideoFolderDataModule
from tests.video.helpers import video_cli_args

TINY_C3D = {"width_mult": 0.125, "batch_norm": True}


def test_fit_test_predict_from_the_quickstart_config(tmp_path, video_root):
    run = tmp_path / "run"
    cli_main(["fit", *video_cli_args(video_root, run, "--trainer.max_epochs", "1",
                                     "--trainer.limit_train_batches", "2")])
    checkpoint = next(run.rglob("last.ckpt"))
    cli_main(["test", *video_cli_args(video_root, run, "--ckpt_path", str(checkpoint))])
    metrics = json.loads(next(run.rglob("metrics.json")).read_text())
    for name in ("test/clip_acc1", "test/clip_acc5", "test/video_acc1_2clips_1crop", "test/video_acc5_2clips_1crop"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert list(run.rglob("test_examples_epoch*.png"))

    cli_main(["predict", *video_cli_args(video_root, run, "--ckpt_path", str(checkpoint))])
    predictions = next(run.rglob("predictions/predictions.csv"))
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12  # one row per test video
    row = rows[0]
    assert row["label"] in {"move_left", "move_right", "rotate_cw", "rotate_ccw", "grow", "shrink"}
    assert len(row["clip_scores"].split()) == 2 and 0 < float(row["probability"]) <= 1
    assert abs(sum(float(row[f"p_{c}"]) for c in ("move_left", "move_right", "rotate_cw", "rotate_ccw", "grow",
                                                    "shrink")) - 1) < 1e-4
    clips = list(predictions.parent.glob("clips/*.csv"))
    assert len(clips) == 12
    with open(clips[0]) as f:
        clip_rows = list(csv.DictReader(f))
    assert [r["clip"] for r in clip_rows] == ["0", "1"] and clip_rows[1]["start_frame"] == "4"


def test_video_accuracy_averages_the_clips_softmax(video_root):
    task = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                   backbone_kwargs=TINY_C3D).eval()
    videos = torch.randn(2, 3, 3, 8, 28, 28)
    loss, outputs = task.compute_loss({"video": videos, "label": torch.tensor([0, 1])}, "val")
    with torch.no_grad():
        per_clip = torch.stack([task(videos[:, k]) for k in range(3)], dim=1)
    torch.testing.assert_close(outputs["clip_logits"], per_clip, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs["video_probs"], per_clip.softmax(-1).mean(1), rtol=1e-4, atol=1e-5)
    assert set(task.metrics_for("val").keys()) == {"val/clip_acc1", "val/clip_acc5", "val/video_acc1_10clips_1crop",
                                                   "val/video_acc5_10clips_1crop"}
    assert task.monitor == "val/video_acc1_10clips_1crop"


def test_other_backbones_run_on_clips():
    clip = torch.randn(2, 3, 4, 32, 32)
    for backbone, kwargs in [("r2plus1d_18", {}), ("inflated_resnet18", {"time_kernel": 3}),
                             ("resnet18", {"widths": [8, 16, 32, 64]})]:
        task = VideoClassificationTask(backbone=backbone, num_classes=5, clip_len=4, crop_size=32,
                                       backbone_kwargs=kwargs).eval()
        with torch.no_grad():
            assert task(clip).shape == (2, 5), backbone
    assert not task.is_3d  # resnet18: a 2D model, run per frame and averaged over time


def test_feature_protocol_trains_only_a_linear_classifier_on_clip_averaged_fc6(tmp_path, video_root):
    torch.manual_seed(0)
    task = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28, backbone_kwargs=TINY_C3D,
                                   feature_protocol=True, optimizer="adamw", lr=0.05, weight_decay=0.0)
    assert [n for n, p in task.named_parameters() if p.requires_grad] == ["probe.weight", "probe.bias"]
    assert task.probe.in_features == 512  # fc6 of the 1/8-width C3D
    videos = torch.randn(2, 3, 3, 8, 28, 28)
    with torch.no_grad():
        fc6 = torch.stack([task.backbone.embed(videos[:, k].contiguous(memory_format=torch.channels_last_3d))
                           for k in range(3)], 1)
    descriptors = task.extract_features(videos)
    torch.testing.assert_close(descriptors, torch.nn.functional.normalize(fc6.mean(1), dim=1), rtol=1e-4, atol=1e-5)
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}

    import pytorch_lightning as pl

    dm = VideoFolderDataModule(str(video_root), clip_len=8, clips_per_video=2, batch_size=6, resize=(32, 44),
                               crop_size=28, train_sampling="uniform", train_transforms="c3d_noflip")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(task, dm)
    assert task.backbone.training is False  # the frozen extractor stays in eval mode
    for key, value in task.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert trainer.callback_metrics["train/loss_epoch"] < 1.0  # the hinge loss starts at ~1 and falls
    assert "val/video_acc1_2clips_1crop" in trainer.callback_metrics


def test_mismatched_clip_length_is_named(tmp_path, video_root):
    with pytest.raises(DataError, match="model.init_args.clip_len is 16 but data.init_args.clip_len is 8"):
        cli_main(["fit", *video_cli_args(video_root, tmp_path, "--model.init_args.clip_len", "16",
                                         "--trainer.fast_dev_run", "true")])
    with pytest.raises(ValueError, match="probe_loss"):
        VideoClassificationTask(num_classes=3, probe_loss="svm")


def test_wrong_number_of_classes_is_named(tmp_path, video_root):
    with pytest.raises(DataError, match="num_classes is 4 but the data"):
        cli_main(["fit", *video_cli_args(video_root, tmp_path, "--model.init_args.num_classes", "4",
                                         "--trainer.fast_dev_run", "true")])


def test_two_fits_give_identical_weights_for_any_num_workers(tmp_path, video_root):
    """Random clip starts, crops and flips come from each sample's seed, not from the worker that loads it."""
    weights = []
    for workers in ("0", "2"):
        run = cli_main(["fit", *video_cli_args(video_root, tmp_path / workers, "--trainer.max_epochs", "1",
                                               "--trainer.limit_train_batches", "2", "--data.init_args.num_workers",
                                               workers)])
        weights.append(run.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
