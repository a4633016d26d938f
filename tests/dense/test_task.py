"""DensePredictionTask: losses over targets, bad batches, and fit/test/predict through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from densecnn.data import DataError
from densecnn.data.synthetic.dense import write_dense_dataset
from tasks import DensePredictionTask
from tasks.cli import main

SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _task(targets=("depth", "normals", "semantic"), **kwargs):
    return DensePredictionTask(backbone="cifar_resnet20", targets=list(targets), num_classes=5, **SMALL_HEAD,
                               **kwargs)


def _batch(n=2, h=24, w=32):
    torch.manual_seed(0)
    return {"image": torch.randn(n, 3, h, w), "depth": torch.rand(n, h, w) * 3 + 0.5,
            "normals": torch.nn.functional.normalize(torch.randn(n, 3, h, w), dim=1),
            "semantic": torch.randint(0, 5, (n, h, w)), "name": [f"s{i}" for i in range(n)]}


def test_loss_is_the_weighted_sum_of_target_losses_and_outputs_match_the_ground_truth_size():
    task = _task(loss_weights={"semantic": 0.0, "normals": 0.0}, scale2_loss_weight=0.0)
    batch = _batch()
    loss, outputs = task.compute_loss(batch, "val")
    assert outputs["depth"].shape == (2, 1, 24, 32) and outputs["semantic"].shape == (2, 5, 24, 32)
    torch.testing.assert_close(outputs["normals"].norm(dim=1), torch.ones(2, 24, 32))
    from densecnn.losses import depth_loss

    torch.testing.assert_close(loss, depth_loss(outputs["depth"], batch["depth"]))
    task.eval()
    with torch.no_grad():
        out = task(batch["image"])
    assert out["depth"].shape == (2, 24, 32) and bool((out["depth"] > 0).all())


def test_a_sample_without_valid_depth_gives_no_nan_and_is_counted():
    task = _task(targets=["depth"])
    batch = _batch()
    batch["depth"][1] = 0.0
    loss, _ = task.compute_loss(batch, "train")
    loss.backward()
    assert torch.isfinite(loss) and task._empty_depth["train"] == ["s1"]
    batch["depth"][0] = float("nan")
    loss, _ = task.compute_loss(batch, "train")
    assert float(loss) == 0.0


def test_bad_batches_name_the_sample_or_the_target():
    task = _task()
    batch = _batch()
    batch["semantic"][1, 0, 0] = 9
    with pytest.raises(DataError, match=r"labels outside 0..4 .* sample\(s\) s1: values \[9\]"):
        task.compute_loss(batch, "train")
    del batch["normals"]
    with pytest.raises(DataError, match="no 'normals' ground truth"):
        task.compute_loss(batch, "train")
    with pytest.raises(ValueError, match="num_classes"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["semantic"])
    with pytest.raises(ValueError, match="unknown target 'albedo'"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["albedo"])
    with pytest.raises(ValueError, match="loss_weights"):
        _task(targets=["depth"], loss_weights={"normals": 1.0})


def test_freeze_backbone_keeps_the_multiscale_head_trainable():
    task = _task(targets=["depth"], freeze_backbone=True)
    head = {id(p) for p in task.head.parameters()}
    assert all(id(p) not in head for p in task.backbone_body_parameters())
    assert task.head_modules() == [task.head]


def _write_config(tmp_path: Path, targets, extra_trainer=None) -> Path:
    data_root = tmp_path / "rooms"
    if not data_root.exists():
        write_dense_dataset(data_root, height=24, width=32, splits={"train": 4, "val": 2, "test": 2})
    config = {
        "seed_everything": 1,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path / "runs"),
                    "limit_train_batches": 2, "limit_val_batches": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs")}}, **(extra_trainer or {})},
        "model": {"class_path": "DensePredictionTask",
                  "init_args": {"backbone": "cifar_resnet20", "targets": targets, "num_classes": 5,
                                "optimizer": "adamw", "lr": 0.001, **SMALL_HEAD}},
        "data": {"class_path": "DenseDataModule",
                 "init_args": {"root": str(data_root), "image_size": [24, 32], "crop_size": [20, 28],
                               "batch_size": 2, "num_classes": 5}},
    }
    path = tmp_path / f"config_{'_'.join(targets)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_fit_test_predict_writes_metrics_pictures_and_prediction_files(tmp_path):
    config = _write_config(tmp_path, ["depth", "normals", "semantic"])
    main(["fit", "--config", str(config)])
    run = sorted((tmp_path / "runs" / "lightning_logs").glob("version_*"))[-1]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and list((run / "pictures").glob("val_examples_epoch000.png"))
    task = DensePredictionTask.load_from_checkpoint(ckpt)
    assert task.hparams.class_names == ["floor", "ceiling", "wall", "box", "sphere"]
    main(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    metrics = json.loads((sorted((tmp_path / "runs" / "lightning_logs").glob("version_*"))[-1] / "metrics.json").read_text())
    for key in ("test/depth/abs_rel", "test/depth/silog", "test/normals/median", "test/semantic/miou",
                "test/semantic/fwiou", "test/loss"):
        assert key in metrics and metrics[key] is not None
    main(["predict", "--config", str(config), "--ckpt_path", str(ckpt)])
    out = sorted((tmp_path / "runs" / "lightning_logs").glob("version_*"))[-1] / "predictions"
    depth = np.asarray(Image.open(out / "depth" / "test_00000.png"))
    assert depth.dtype == np.uint16 and depth.shape == (24, 32) and depth.min() > 0
    assert np.asarray(Image.open(out / "depth_colour" / "test_00000.png")).shape == (24, 32, 3)
    assert np.asarray(Image.open(out / "normals" / "test_00000.png")).shape == (24, 32, 3)
    labels = Image.open(out / "labels" / "test_00000.png")
    assert labels.mode == "P" and np.asarray(labels).max() < 5
    assert (out / "overlay" / "test_00001.png").is_file()
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("name,source,depth") and len(rows) == 3
    assert (out / "classes.txt").read_text().split() == ["floor", "ceiling", "wall", "box", "sphere"]


def test_predict_on_a_folder_of_plain_images(tmp_path):
    config = _write_config(tmp_path, ["depth"], {"limit_predict_batches": 1})
    images = tmp_path / "photos"
    images.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "kitchen.png")
    main(["predict", "--config", str(config), "--data.init_args.predict_root", str(images)])
    written = list((tmp_path / "runs").rglob("predictions/depth/kitchen.png"))
    assert written and np.asarray(Image.open(written[0])).shape == (24, 32)


@pytest.mark.parametrize("name", [pytest.param("depth", marks=pytest.mark.slow),
                                  pytest.param("normals", marks=pytest.mark.slow),
                                  pytest.param("semantic", marks=pytest.mark.slow), "multitask"])
def test_quickstart_configs_run(tmp_path, name):
    """Each quickstart recipe, as shipped, for one batch on a tiny copy of the synthetic rooms."""
    main(["fit", "--config", str(CONFIGS / "quickstart" / f"{name}.yaml"), "--trainer.fast_dev_run", "true",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.init_args.root", str(tmp_path / "rooms"),
          "--data.init_args.synthetic_splits", "{train: 2, val: 2, test: 1}", "--data.init_args.num_workers", "0",
          "--data.init_args.batch_size", "2"])
    assert (tmp_path / "rooms" / "train" / "rgb" / "train_00000.png").is_file()


def test_depth_and_normals_as_inputs_for_labelling(tmp_path):
    """The paper's NYU labelling inputs: ground-truth depth and normals, each through its own 9x9 bank at
    scales 2 and 3; they must change the prediction, get gradients, and be present in every batch."""
    from densecnn.heads.dense import encode_input_map

    task = _task(targets=["semantic"], input_maps=["depth", "normals"], input_map_channels=4)
    for scale in (task.head.scale2, task.head.scale3):
        assert {k: tuple(v.weight.shape) for k, v in scale.map_convs.items()} == {
            "depth": (4, 1, 9, 9), "normals": (4, 3, 9, 9)}
    batch = _batch()
    loss, outputs = task.compute_loss(batch, "train")
    loss.backward()
    assert outputs["semantic"].shape == (2, 5, 24, 32)
    assert task.head.scale2.map_convs["depth"].weight.grad.abs().sum() > 0
    assert task.head.scale3.map_convs["normals"].weight.grad.abs().sum() > 0
    task.eval()
    with torch.no_grad():
        before = task(batch["image"], task.input_maps_from(batch))["semantic"]
        batch["depth"] = batch["depth"] * 2
        after = task(batch["image"], task.input_maps_from(batch))["semantic"]
    assert not torch.allclose(before, after)
    # holes in the input depth read as 0 (log 1 m), never NaN
    depth = torch.tensor([[[2.0, 0.0], [float("nan"), float("inf")]]])
    torch.testing.assert_close(encode_input_map("depth", depth),
                               torch.tensor([[[[np.log(2.0), 0.0], [0.0, 0.0]]]], dtype=torch.float32))
    del batch["normals"]
    with pytest.raises(DataError, match="input_maps needs the normals map"):
        task.compute_loss(batch, "val")
    with pytest.raises(ValueError, match="'depth' is also a target"):
        _task(targets=["depth", "semantic"], input_maps=["depth"])
    with pytest.raises(ValueError, match="unknown map 'hha'"):
        _task(targets=["semantic"], input_maps=["hha"])
    # notebooks: predict_image takes the maps beside the image
    rgb = np.zeros((24, 32, 3), np.uint8)
    out = task.predict_image(rgb, depth=np.full((24, 32), 2.0, np.float32),
                             normals=np.dstack([np.zeros((24, 32, 2)), np.ones((24, 32))]).astype(np.float32))
    assert out["semantic"].shape == (24, 32)
    with pytest.raises(DataError, match="input_maps needs the depth, normals map"):
        task.predict_image(rgb)


def test_cli_semantic_with_depth_and_normals_inputs(tmp_path):
    config = _write_config(tmp_path, ["semantic"])
    extra = ["--model.init_args.input_maps", "[depth, normals]", "--model.init_args.input_map_channels", "4"]
    main(["fit", "--config", str(config), *extra])
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    main(["predict", "--config", str(config), *extra, "--ckpt_path", str(ckpt)])
    labels = list((tmp_path / "runs").rglob("predictions/labels/test_00000.png"))
    assert labels and np.asarray(Image.open(labels[0])).shape == (24, 32)


def test_two_stage_schedule_scales12_then_scale3(tmp_path):
    """The paper's schedule: scales 1+2 on the scale-2 output, then scale 3 alone from the first stage's weights."""
    from tasks.base import CheckpointError

    stage_one = _task(targets=["depth"], training_stage="scales12")
    batch = _batch()
    scales = stage_one.forward_scales(batch["image"])
    assert len(scales) == 1  # scale 3 is not run
    assert not any(p.requires_grad for p in stage_one.head.scale3.parameters())
    loss, outputs = stage_one.compute_loss(batch, "train")
    loss.backward()
    assert outputs["depth"].shape == (2, 1, 24, 32) and stage_one.head.scale2.image_conv.weight.grad is not None

    config = _write_config(tmp_path, ["depth"])
    main(["fit", "--config", str(config), "--model.init_args.training_stage", "scales12"])
    first = next((tmp_path / "runs").rglob("last.ckpt"))
    first_state = torch.load(first, map_location="cpu", weights_only=True)["state_dict"]
    second_dir = tmp_path / "stage2"
    main(["fit", "--config", str(config), "--model.init_args.training_stage", "scale3",
          "--model.init_args.init_checkpoint", str(first), "--trainer.default_root_dir", str(second_dir),
          "--trainer.logger", "false"])
    second = next(second_dir.rglob("last.ckpt"))
    second_state = torch.load(second, map_location="cpu", weights_only=True)["state_dict"]
    kept = [k for k in first_state if not k.startswith("head.scale3.")]
    assert kept and all(torch.equal(first_state[k], second_state[k]) for k in kept)  # BN statistics included
    assert any(not torch.equal(first_state[k], second_state[k]) for k in first_state if k.startswith("head.scale3."))
    with pytest.raises(CheckpointError, match=r"init_checkpoint: .*last.ckpt: shapes do not match .*head.scale3"):
        main(["fit", "--config", str(config), "--model.init_args.targets", "[depth, normals]",
              "--model.init_args.init_checkpoint", str(first), "--trainer.default_root_dir", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="training_stage: 'stage2'"):
        _task(targets=["depth"], training_stage="stage2")


def test_the_lr_finder_drives_the_optimizer_of_a_dense_task(tmp_path):
    """BaseTask rebuilds the optimizer and schedules from the finder's suggestion, for every task."""
    from pytorch_lightning.callbacks import LearningRateFinder

    finder = {"class_path": "pytorch_lightning.callbacks.LearningRateFinder",
              "init_args": {"num_training_steps": 20, "early_stop_threshold": None}}
    config = _write_config(tmp_path, ["depth"], extra_trainer={"callbacks": [finder], "limit_train_batches": 2, "max_epochs": 12})
    # a cosine schedule holds the lr it was built with (initial_lr): it must be the suggestion's
    run = main(["fit", "--config", str(config), "--model.init_args.lr_scheduler", "cosine"])
    found = next(cb for cb in run.trainer.callbacks if isinstance(cb, LearningRateFinder)).optimal_lr.suggestion()
    assert found is not None and found != 0.001 and run.model.hparams.lr == found
    optimizer = run.trainer.optimizers[0]
    assert [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups] == pytest.approx(
        [found] * len(optimizer.param_groups))
    assert not list((tmp_path / "runs").glob("*.png")) and not (tmp_path / "runs" / "pictures").exists()
