"""``python -m densecnn export`` end to end: checkpoints made by a one-step ``fit`` of each task family, exported in
both formats, verified on the checkpoint's own test pictures; the card and weights beside them; and the refusals
(an existing export, another task's checkpoint, an unreadable file)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tasks.export import run as export_run
from tests.helpers import QUICKSTART, classification_args, tiny_dense_config, tiny_faster_rcnn_args

#: a small classifier for the checkpoints (the quickstart's ResNet-20 takes longer to export)
LENET = ("--model.init_args.backbone", "lenet5", "--model.init_args.backbone_kwargs", "{in_chans: 3}")


def _fit(args: list[str]) -> None:
    from tasks.cli import main as cli_main

    cli_main(["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
              "--trainer.logger", "false"])


def _checkpoint(run_dir: Path) -> Path:
    return next(run_dir.rglob("last.ckpt"))


def _export(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = export_run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- fast: what the command refuses ------------------------------------------------------------------------------
def test_another_tasks_checkpoint_is_named(tmp_path, classification_root, capsys):
    foreign = tmp_path / "video.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "c3d", "num_classes": 6},
                "densecnn": {"task": "VideoClassificationTask"}}, foreign)
    code, _, err = _export(capsys, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path", str(foreign),
                           "--data.init_args.root", str(classification_root), *LENET)
    assert code == 2
    assert f"{foreign}: saved by VideoClassificationTask" in err and "ClassificationTask" in err
    assert not (tmp_path / "export").exists() and not Path("exports/ClassificationTask").exists()


def test_unreadable_checkpoint_is_named(tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint at all")
    code, _, err = _export(capsys, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path", str(broken))
    assert code == 2 and str(broken) in err


# ---- slow: real checkpoints, every family, both formats --------------------------------------------------------
@pytest.fixture(scope="module")
def classification_checkpoint(tmp_path_factory, classification_root) -> Path:
    run_dir = tmp_path_factory.mktemp("cls_run")
    _fit(classification_args(classification_root, run_dir, *LENET))
    return _checkpoint(run_dir)


def _check_export_folder(folder: Path, fmt: str, out: str) -> dict:
    model_file = {"onnx": "model.onnx", "exported_program": "model.pt2"}[fmt]
    names = {p.name for p in folder.iterdir()}
    assert {model_file, "preprocess.json", "README.md", "model.safetensors"} <= names
    for name in (model_file, "preprocess.json", "README.md", "model.safetensors"):
        assert str(folder / name) in out  # the listing says where everything is
    doc = json.loads((folder / "preprocess.json").read_text())
    assert doc["verification"]["input"] == "test batch"  # the checkpoint's own test pictures
    assert f"max abs difference {doc['verification']['max_abs_diff']:.3g}" in out
    assert doc["verification"]["max_abs_diff"] <= 1e-4
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "exported_program"])
def test_classification_checkpoint_exports_and_verifies(classification_checkpoint, classification_root, fmt, capsys):
    code, out, err = _export(capsys, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path",
                             str(classification_checkpoint), "--format", fmt, "--data.init_args.root",
                             str(classification_root), "--data.init_args.num_workers", "0", *LENET)
    assert code == 0, err
    folder = classification_checkpoint.parent.parent / "export" / fmt  # the default: beside the run's checkpoints
    doc = _check_export_folder(folder, fmt, out)
    checkpoint = torch.load(classification_checkpoint, map_location="cpu", weights_only=True)
    assert doc["class_names"] == checkpoint["hyper_parameters"]["class_names"]
    assert doc["resize"] == [{"op": "resize", "size": [32, 32], "interpolation": "bilinear"}]  # the "small" preset
    assert doc["inputs"][0]["shape"] == ["N", 3, 32, 32] and doc["verification"]["batch_sizes"] == [24, 25]
    # (the whole test split, 6 classes x 4 pictures, is the quickstart's first test batch of 64; then one more)
    # the card and the weights (tasks.model_card) round-trip into the task
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    for key, value in weights.items():
        torch.testing.assert_close(value, checkpoint["state_dict"][key])
    # a second export into the same folder is refused without --overwrite, and the first one stays
    before = (folder / "preprocess.json").read_bytes()
    code, _, err = _export(capsys, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path",
                           str(classification_checkpoint), "--format", fmt,
                           "--data.init_args.root", str(classification_root), *LENET)
    assert code == 2 and "already holds an export" in err and "--overwrite" in err
    assert (folder / "preprocess.json").read_bytes() == before
    code, _, err = _export(capsys, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path",
                           str(classification_checkpoint), "--format", fmt, "--overwrite",
                           "--data.init_args.root", str(classification_root), "--data.init_args.num_workers", "0",
                           *LENET)
    assert code == 0, err
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging or old copy left


@pytest.mark.slow
def test_python_m_densecnn_export_dispatches(classification_checkpoint, classification_root, tmp_path, monkeypatch,
                                             capsys):
    from densecnn.__main__ import main

    out_dir = tmp_path / "exported"
    monkeypatch.setattr(sys, "argv", ["densecnn", "export", "--config", str(QUICKSTART / "classification.yaml"),
                                      "--ckpt_path", str(classification_checkpoint), "--output", str(out_dir),
                                      "--no-dynamic-batch", "--opset", "19",
                                      "--data.init_args.root", str(classification_root),
                                      "--data.init_args.num_workers", "0", *LENET])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    doc = _check_export_folder(out_dir, "onnx", capsys.readouterr().out)
    assert doc["dynamic_batch"] is False and doc["inputs"][0]["shape"] == [2, 3, 32, 32]
    import onnx

    model = onnx.load(str(out_dir / "model.onnx"))
    assert doc["opset"] == 19 and {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "exported_program"])
def test_dense_checkpoint_exports_depth_in_metres(tmp_path, fmt, capsys):
    config = tiny_dense_config(tmp_path)
    _fit(["--config", str(config)])
    checkpoint = _checkpoint(tmp_path / "run")
    out_dir = tmp_path / "out"
    code, out, err = _export(capsys, "--config", str(config), "--ckpt_path", str(checkpoint), "--format", fmt,
                             "--output", str(out_dir))
    assert code == 0, err
    doc = _check_export_folder(out_dir, fmt, out)
    assert doc["units"] == {"depth": "metres", "semantic": "logits"}
    assert doc["class_names"] == (tmp_path / "rooms" / "classes.txt").read_text().split()
    assert doc["input_size"] == [32, 40]
    # the exported depth is the task's own predict_step depth (metres) on the same test pictures
    from tasks import DensePredictionTask
    from tasks.datamodules.dense import DenseDataModule

    task = DensePredictionTask.load_from_checkpoint(checkpoint).eval()
    datamodule = DenseDataModule(str(tmp_path / "rooms"), image_size=(32, 40), batch_size=3, num_classes=5)
    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()))["image"]
    with torch.no_grad():
        expected = task.predict_step({"image": images}, 0)["depth"]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        depth = torch.from_numpy(session.run(["depth"], {"image": images.numpy()})[0])
    else:
        depth = torch.export.load(str(out_dir / "model.pt2")).module()(images)[0]
    torch.testing.assert_close(depth, expected, rtol=1e-4, atol=1e-5)
    assert bool((depth > 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "exported_program"])
def test_video_checkpoint_exports_on_a_fixed_clip(tmp_path, fmt, capsys):
    from densecnn.data.synthetic.video import write_video_dataset
    from tests.video.helpers import TINY, video_cli_args

    root = write_video_dataset(tmp_path / "videos", **TINY)
    args = video_cli_args(root, tmp_path / "run", "--model.init_args.backbone_kwargs",
                          "{width_mult: 0.125, batch_norm: true, dropout: 0.0}")
    _fit(args)
    checkpoint = _checkpoint(tmp_path / "run")
    out_dir = tmp_path / "out"
    code, out, err = _export(capsys, *args, "--ckpt_path", str(checkpoint), "--format", fmt, "--output", str(out_dir))
    assert code == 0, err
    doc = _check_export_folder(out_dir, fmt, out)
    assert doc["clip_len"] == 8 and doc["crop_size"] == 28 and doc["frame_stride"] == 1
    assert doc["frame_size"] == [32, 44] and doc["layout"] == "NCTHW"
    assert doc["inputs"][0]["shape"] == ["N", 3, 8, 28, 28]
    assert doc["sampling"]["clips_per_video"] == 2
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert doc["class_names"] == hparams["class_names"] and len(doc["class_names"]) == 6
    assert doc["verification"]["batch_sizes"][0] == 4 * 2  # 4 test videos x 2 clips each, as single clips


@pytest.mark.slow
def test_faster_rcnn_checkpoint_exports_one_image_to_boxes(tmp_path, capsys):
    """A detector through the command: the quickstart Faster R-CNN at a small width, one training step, exported
    to ONNX (torchvision's path, the TorchScript exporter) and verified in onnxruntime."""
    small = tiny_faster_rcnn_args(tmp_path)
    _fit([*small, "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"])
    checkpoint = _checkpoint(tmp_path / "run")
    out_dir = tmp_path / "export"
    code, out, err = _export(capsys, *small, "--ckpt_path", str(checkpoint), "--format", "onnx", "--output",
                             str(out_dir))
    assert code == 0, err
    doc = json.loads((out_dir / "preprocess.json").read_text())
    assert [i["name"] for i in doc["inputs"]] == ["image"] and doc["outputs"][0]["name"] == "boxes"
    assert doc["class_names"] == torch.load(checkpoint, map_location="cpu",
                                            weights_only=True)["hyper_parameters"]["class_names"]
    assert doc["verification"]["max_abs_diff"] <= 1e-3 and str(out_dir / "model.onnx") in out


@pytest.mark.parametrize("command", ["export", "explain"])
def test_an_unknown_option_is_named_before_anything_is_built(command, tmp_path, capsys):
    from tasks.explain import run as explain_run

    run = export_run if command == "export" else explain_run
    method = ["saliency"] if command == "explain" else []
    capsys.readouterr()
    code = run([*method, "--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path",
                str(tmp_path / "missing.ckpt"), "--bogus", "1"])
    assert code == 2 and f"densecnn {command}: unknown argument(s) --bogus" in capsys.readouterr().err
