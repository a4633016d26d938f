"""The NYU recipes follow the paper's two-stage schedule (Eigen & Fergus, Sec. 3.4): each recipe is stage 1
(``scales12``) and its ``.scale3.yaml`` overlay is stage 2, initialised from the newest last.ckpt of stage 1's run
root (``init_checkpoint`` given as a folder)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from scipy.io import savemat

from tasks.base import CheckpointError
from tasks.checkpoints import find_last_checkpoint
from tasks.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dense"
RECIPES = sorted(p for p in CONFIGS.glob("nyu_*.yaml") if not p.name.endswith(".scale3.yaml"))


def _overlay(recipe: Path) -> Path:
    return recipe.with_name(f"{recipe.stem}.scale3.yaml")


def _parsed(capsys, *configs: Path) -> dict:
    """The config as ``python -m densecnn fit --config ...`` resolves it (the CLI's own parser)."""
    args = ["fit"] + [a for path in configs for a in ("--config", str(path))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_nyu_recipes():
    assert len(RECIPES) == 5


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_is_stage_one_and_its_overlay_is_stage_two_from_its_checkpoint(recipe, capsys):
    assert _overlay(recipe).is_file(), f"{recipe.name} has no stage-2 overlay"
    stage1 = _parsed(capsys, recipe)
    stage2 = _parsed(capsys, recipe, _overlay(recipe))
    assert stage1["model"]["init_args"]["training_stage"] == "scales12"
    assert stage2["model"]["init_args"]["training_stage"] == "scale3"
    assert Path(stage2["model"]["init_args"]["init_checkpoint"]) == Path(stage1["trainer"]["default_root_dir"])
    # the overlay changes the schedule and the run's place, nothing of the network or the data
    changed = {k for k, v in stage2["model"]["init_args"].items() if stage1["model"]["init_args"][k] != v}
    assert changed <= {"training_stage", "init_checkpoint", "lr", "lr_scheduler_kwargs"}
    assert stage2["data"] == stage1["data"]
    root1, root2 = Path(stage1["trainer"]["default_root_dir"]), Path(stage2["trainer"]["default_root_dir"])
    # neither run root holds the other: stage 2's init_checkpoint and --ckpt_path last each find their own stage
    assert root1 != root2 and root1 not in root2.parents and root2 not in root1.parents
    assert "logger" not in stage2["trainer"] or stage2["trainer"]["logger"] in (None, True)


def _write_nyu(root: Path, height: int = 24, width: int = 32, frames: int = 4) -> None:
    """A tiny labeled file and split in the official layout (MATLAB column-major: arrays transposed)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rng.integers(0, 256, size=(frames, 3, width, height), dtype=np.uint8)
        f["depths"] = rng.uniform(0.5, 9.0, size=(frames, width, height)).astype(np.float32)
        f["labels"] = np.zeros((frames, width, height), dtype=np.uint16)
    savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [2], [3]]), "testNdxs": np.array([[4]])})


TINY = ["--model.init_args.backbone", "cifar_resnet20", "--model.init_args.weights", "null",
        "--model.init_args.coarse_pool", "[2, 3]", "--model.init_args.coarse_hidden", "16",
        "--model.init_args.coarse_channels", "4", "--model.init_args.coarse_size", "[3, 4]",
        "--model.init_args.scale2_image_channels", "8", "--model.init_args.scale2_widths", "[8]",
        "--model.init_args.scale3_image_channels", "8", "--model.init_args.scale3_widths", "[8]",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.image_size", "[24, 32]", "--data.init_args.crop_size", "[20, 28]",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"]


def test_the_alexnet_recipe_chain_trains_scale3_from_stage_ones_weights(tmp_path, monkeypatch, capsys):
    """Both commands of the recipe's header, run as written (relative paths, in a fresh folder) with only the
    network and data made tiny: stage 2 reads stage 1's last.ckpt from the overlay's init_checkpoint, keeps
    the backbone, scale 1 and scale 2 exactly, and trains scale 3."""
    recipe = CONFIGS / "nyu_depth_alexnet.yaml"
    monkeypatch.chdir(tmp_path)
    _write_nyu(tmp_path / "data" / "nyu")  # the recipe's data.init_args.root: data/nyu
    main(["fit", "--config", str(recipe), *TINY])
    main(["fit", "--config", str(recipe), "--config", str(_overlay(recipe)), *TINY])
    init_checkpoint = yaml.safe_load(_overlay(recipe).read_text())["model"]["init_args"]["init_checkpoint"]
    stage1_file = find_last_checkpoint([tmp_path / init_checkpoint])
    stage2_file = find_last_checkpoint([tmp_path / "runs/dense/nyu_depth_alexnet.scale3"])
    assert stage1_file.is_relative_to(tmp_path / "runs/dense/nyu_depth_alexnet/")
    first = torch.load(stage1_file, map_location="cpu", weights_only=True)["state_dict"]
    second = torch.load(stage2_file, map_location="cpu", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    kept = [k for k in first if not k.startswith("head.scale3.")]
    assert any(k.startswith("head.scale1.") for k in kept) and any(k.startswith("head.scale2.") for k in kept)
    assert any(k.startswith("backbone.") for k in kept)
    for key in kept:  # batch norm statistics included
        assert torch.equal(first[key], second[key]), key
    trained = [k for k in first if k.startswith("head.scale3.") and not torch.equal(first[k], second[k])]
    assert trained  # scale 3 left its initialisation
    # the header's test command: --ckpt_path last resolves to stage 2's checkpoint, under its own run root
    capsys.readouterr()
    main(["test", "--config", str(recipe), "--config", str(_overlay(recipe)), *TINY, "--ckpt_path", "last"])
    assert f"from {stage2_file}" in capsys.readouterr().err


def test_init_checkpoint_folder_without_a_checkpoint_is_named(tmp_path, monkeypatch):
    recipe = CONFIGS / "nyu_depth_alexnet.yaml"
    monkeypatch.chdir(tmp_path)
    _write_nyu(tmp_path / "data" / "nyu")
    (tmp_path / "runs/dense/nyu_depth_alexnet").mkdir(parents=True)  # stage 1 never got to save
    with pytest.raises(CheckpointError, match=r"init_checkpoint: runs/dense/nyu_depth_alexnet is a folder without"):
        main(["fit", "--config", str(recipe), "--config", str(_overlay(recipe)), *TINY])
