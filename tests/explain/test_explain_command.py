"""``python -m densecnn explain`` and ``explain_task`` for every task family, and ``ExplainCallback``.

Fast: the command on a one-step classification checkpoint (the captions' probabilities checked against the task
loaded from the checkpoint), ``explain_task`` on small dense, video and Faster R-CNN tasks built in the test (the
explained numbers checked against the tasks' own outputs and torchvision's RoI head), and the callback's epochs.
Slow: the command on one-step dense, video and Faster R-CNN checkpoints."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from tasks.explain import explain_task
from tasks.explain import run as explain_run
from tests.helpers import QUICKSTART, classification_args, tiny_dense_config, tiny_faster_rcnn_args

LENET = ("--model.init_args.backbone", "lenet5", "--model.init_args.backbone_kwargs", "{in_chans: 3}")


def _fit(args: list[str]) -> None:
    from tasks.cli import main as cli_main

    cli_main(["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
              "--trainer.logger", "false"])


def _explain(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = explain_run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _check_folder(folder: Path, out: str, count: int) -> list[dict]:
    entries = json.loads((folder / "pictures.json").read_text())
    assert len(entries) == count
    index = (folder / "index.html").read_text()
    for entry in entries:
        assert (folder / entry["file"]).stat().st_size > 1000
        assert f'src="{entry["file"]}"' in index and str(folder / entry["file"]) in out
    assert f"pictures and index written to {folder / 'index.html'}" in out
    return entries


# ---- fast ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classification_checkpoint(tmp_path_factory, classification_root) -> Path:
    run_dir = tmp_path_factory.mktemp("cls_run")
    _fit(classification_args(classification_root, run_dir, *LENET))
    return next(run_dir.rglob("last.ckpt"))


def test_classification_command_explains_the_predicted_class(classification_checkpoint, classification_root, capsys):
    common = ("--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path", str(classification_checkpoint),
              "--data.init_args.root", str(classification_root), *LENET, "--num-images", "3")
    code, out, err = _explain(capsys, "saliency", *common)
    assert code == 0, err
    folder = classification_checkpoint.parent.parent / "explain" / "saliency"  # beside the run's checkpoints
    entries = _check_folder(folder, out, 3)
    # the oracle: the task loaded from the checkpoint on the same first three test images
    from tasks import ClassificationTask
    from tasks.datamodules.image_folder import ImageFolderDataModule

    task = ClassificationTask.load_from_checkpoint(classification_checkpoint).eval()
    datamodule = ImageFolderDataModule(str(classification_root), image_size=32, batch_size=3, num_workers=0,
                                       train_transforms="small")
    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()))["image"]
    with torch.no_grad():
        probs = task(images).softmax(dim=1)
    for entry, p in zip(entries, probs):
        c = int(p.argmax())
        assert entry["title"] == f"saliency: predicted class {task.class_names[c]} (p={float(p[c]):.2f})"
        assert entry["value"] == pytest.approx(float(p[c]), abs=1e-5)
    # a chosen class by name, Grad-CAM at two named layers, occlusion with the user's window
    code, out, err = _explain(capsys, "gradcam", *common, "--target", task.class_names[2], "--layers", "s2",
                              "backbone.s4")
    assert code == 0, err
    entries = _check_folder(folder.parent / "gradcam", out, 3)
    assert all(f"chosen class {task.class_names[2]} (p=" in e["title"] for e in entries)
    code, out, err = _explain(capsys, "occlusion", *common, "--window", "8", "8", "--stride", "8", "8",
                              "--output", str(folder.parent / "occ"))
    assert code == 0, err
    _check_folder(folder.parent / "occ", out, 3)
    # the first layer's kernels (densecnn.explain.filter_picture) through the same command
    code, out, err = _explain(capsys, "filters", *common)
    assert code == 0, err
    assert [e["name"] for e in _check_folder(folder.parent / "filters", out, 1)] == ["filters_first_conv"]
    # mistakes are named
    code, _, err = _explain(capsys, "gradcam", *common, "--layers", "layer9")
    assert code == 2 and "--layers 'layer9'" in err and "s4" in err
    code, _, err = _explain(capsys, "shap", *common)
    assert code == 2 and "'shap'" in err and "saliency" in err
    code, _, err = _explain(capsys, "saliency", *common, "--target", "hexagon")
    assert code == 2 and "--target 'hexagon'" in err


def test_python_m_densecnn_dispatches_explain(monkeypatch):
    from densecnn.__main__ import main

    calls = []
    monkeypatch.setattr("tasks.explain.run", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", ["densecnn", "explain", "saliency", "--config", "c.yaml"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0 and calls == [["saliency", "--config", "c.yaml"]]


def _dense_task():
    from tasks import DensePredictionTask

    torch.manual_seed(0)
    return DensePredictionTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, targets=["depth", "semantic"],
                               num_classes=5, coarse_pool=[1, 1], coarse_hidden=16, coarse_channels=4,
                               coarse_size=[3, 4], scale2_image_channels=4, scale2_widths=[4],
                               scale3_image_channels=4, scale3_widths=[4]).eval()


def test_dense_explains_the_mean_of_an_output_window():
    task = _dense_task()
    images = torch.randn(2, 3, 32, 40)
    region = (4, 6, 12, 20)  # top, left, bottom, right
    pictures = explain_task(task, images, "saliency", region=region, progress=False)
    x = images.clone().requires_grad_(True)
    depth = task(x)["depth"][:, 4:12, 6:20].mean(dim=(1, 2))
    for i, picture in enumerate(pictures):
        assert picture.value == pytest.approx(float(depth[i].detach()), rel=1e-5)
        assert "rows 4-11, columns 6-19" in picture.title
        grad = torch.autograd.grad(depth[i], x, retain_graph=True)[0][i]
        torch.testing.assert_close(picture.heats[0], grad.abs().amax(dim=0))
    semantic = explain_task(task, images[:1], "gradcam", "semantic:3", region=region, progress=False)[0]
    with torch.no_grad():
        expected = task(images[:1])["semantic"][0, 3, 4:12, 6:20].mean()
    assert semantic.value == pytest.approx(float(expected), rel=1e-5) and "mean 3 score" in semantic.title
    assert semantic.heats[0].shape == (32, 40)
    from densecnn.errors import ConfigError

    with pytest.raises(ConfigError, match="--region"):
        explain_task(task, images, "saliency", region=(0, 0, 40, 40), progress=False)


def test_video_saliency_covers_space_and_time():
    from tasks import VideoClassificationTask

    torch.manual_seed(0)
    task = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                   backbone_kwargs={"width_mult": 0.125, "batch_norm": True, "dropout": 0.0}).eval()
    videos = torch.randn(1, 2, 3, 8, 28, 28)  # one video, two clips: the middle (second) one is explained
    picture = explain_task(task, videos, "saliency", progress=False)[0]
    clip = videos[:, 1].clone().requires_grad_(True)
    logits = task.clip_logits(clip)
    c = int(logits.argmax())
    assert picture.value == pytest.approx(float(logits.softmax(1)[0, c]), rel=1e-5)
    grad = torch.autograd.grad(logits[0, c], clip)[0][0]
    torch.testing.assert_close(picture.heats[0], grad.abs().amax(dim=0))  # (T, H, W)
    assert picture.heats[0].shape == (8, 28, 28) and picture.image.shape[1] > 4 * picture.image.shape[0]  # a strip


def test_faster_rcnn_box_logit_is_torchvisions_roi_score():
    """The explained score of a box is the RoI head's logit of its class with the box as the region: its softmax
    over the classes is the score torchvision's RoI heads give that region."""
    from tasks import FasterRCNNTask

    torch.manual_seed(0)
    task = FasterRCNNTask(backbone="resnet18", num_classes=3, box_head="mlp", feature_index=1, mlp_dim=32,
                          backbone_kwargs={"widths": [8, 16, 32, 64]}, anchor_sizes=[16, 32, 48], frozen_bn=False,
                          trainable_stages=None, score_thresh=0.0).eval()
    box = torch.tensor([[10.0, 12.0, 40.0, 50.0]])
    batch = {"image": torch.randn(1, 3, 64, 64), "image_size": torch.tensor([[64, 64]]),
             "target": [{"boxes": box, "labels": torch.tensor([2])}]}
    logits = [explain_task(task, {**batch, "target": [{"boxes": box, "labels": torch.tensor([k])}]}, "saliency",
                           boxes="ground_truth", progress=False)[0].value for k in range(4)]
    probs = torch.tensor(logits).softmax(dim=0)
    detector = task.detector
    with torch.no_grad():
        features = detector.backbone(batch["image"])
        detections = detector.roi_heads(features, [box], [(64, 64)])[0][0]
    for label, score in zip(detections["labels"].tolist(), detections["scores"].tolist()):
        assert score == pytest.approx(float(probs[label]), rel=1e-4)
    picture = explain_task(task, batch, "gradcam", boxes="ground_truth", progress=False)[0]
    assert picture.name == "image000_box0" and "ground truth 0" in picture.title
    assert float(picture.heats[0].max()) >= 0 and picture.heats[0].shape == (64, 64)


def test_callback_writes_pictures_at_the_right_epochs(tmp_path, classification_root):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from tasks import ClassificationTask
    from tasks.callbacks import ExplainCallback
    from tasks.datamodules.image_folder import ImageFolderDataModule

    class RecordingLogger(CSVLogger):
        """A logger that takes images as W&B's and Neptune's do (``log_image(key, images, step)``), recorded."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.images: list[tuple[str, int]] = []

        def log_image(self, key, images, step):
            self.images.append((key, step))

    callback = ExplainCallback(methods=["saliency", "gradcam"], every_n_epochs=2, num_images=2)
    logger = RecordingLogger(tmp_path, name="run")
    trainer = pl.Trainer(max_epochs=4, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=logger,
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0)
    task = ClassificationTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=6, lr=0.01)
    datamodule = ImageFolderDataModule(str(classification_root), image_size=32, batch_size=8, num_workers=0,
                                       train_transforms="small")
    trainer.fit(task, datamodule)
    folder = Path(logger.log_dir) / "pictures" / "explain"
    written = sorted(p.name for p in folder.iterdir())
    assert written == sorted(f"{m}_image{i:03d}_epoch{e:03d}.png" for m in ("saliency", "gradcam")
                             for i in range(2) for e in (1, 3))
    explained = sorted(entry for entry in logger.images if entry[0].startswith("explain/"))
    assert explained == sorted((f"explain/{m}/image{i:03d}", s) for m in ("saliency", "gradcam")
                                           for i in range(2) for s in (2, 4))  # one step per epoch
    assert task.training  # the network's mode is given back


# ---- slow: the command on one-step checkpoints of the other families ------------------------------------------
@pytest.mark.slow
def test_dense_checkpoint_command(tmp_path, capsys):
    config = tiny_dense_config(tmp_path)
    _fit(["--config", str(config)])
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    code, out, err = _explain(capsys, "integrated_gradients", "--config", str(config), "--ckpt_path",
                              str(checkpoint), "--num-images", "3", "--region", "8", "8", "24", "32", "--steps", "8")
    assert code == 0, err
    entries = _check_folder(checkpoint.parent.parent / "explain" / "integrated_gradients", out, 3)
    assert all(re.search(r"mean depth \d+\.\d\d m in rows 8-23, columns 8-31", e["title"]) for e in entries)


@pytest.mark.slow
def test_video_checkpoint_command(tmp_path, capsys):
    from densecnn.data.synthetic.video import write_video_dataset
    from tests.video.helpers import TINY, video_cli_args

    root = write_video_dataset(tmp_path / "videos", **TINY)
    args = video_cli_args(root, tmp_path / "run", "--model.init_args.backbone_kwargs",
                          "{width_mult: 0.125, batch_norm: true, dropout: 0.0}")
    _fit(args)
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    code, out, err = _explain(capsys, "occlusion", *args, "--ckpt_path", str(checkpoint), "--num-images", "2",
                              "--window", "2", "7", "7", "--stride", "2", "7", "7", "--output", str(tmp_path / "o"))
    assert code == 0, err
    entries = _check_folder(tmp_path / "o", out, 2)
    assert all(e["name"].startswith("video") and "predicted class" in e["title"] for e in entries)


@pytest.mark.slow
def test_faster_rcnn_checkpoint_command(tmp_path, capsys):
    small = tiny_faster_rcnn_args(tmp_path)
    _fit([*small, "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"])
    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    code, out, err = _explain(capsys, "gradcam", *small, "--ckpt_path", str(checkpoint), "--num-images", "2",
                              "--boxes", "ground_truth", "--max-boxes", "2")
    assert code == 0, err
    entries = _check_folder(checkpoint.parent.parent / "explain" / "gradcam", out, len(json.loads(
        (checkpoint.parent.parent / "explain" / "gradcam" / "pictures.json").read_text())))
    assert entries and all(re.fullmatch(r"image00[01]_box[01]", e["name"]) for e in entries)
    assert all("ground truth" in e["title"] and "RoI logit" in e["title"] for e in entries)
