"""Real ``python -m densecnn fit`` processes: the same config and seed give bit-identical weights for any
``num_workers``, and a run killed with SIGKILL mid-epoch then resumed with ``--ckpt_path last`` ends with the
weights of the run that was never interrupted."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import QUICKSTART, REPO, classification_args, densecnn_command, fit_killed_mid_run

SLOW = json.dumps([{"class_path": "tests.helpers.SlowTraining", "init_args": {"seconds": 0.25}}])


def fit(args: list[str], cwd: Path = REPO) -> None:
    env = {"PYTHONPATH": str(REPO)}
    import os

    result = subprocess.run(densecnn_command("fit", args), cwd=cwd, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    (last,) = [p for p in root.rglob("last.ckpt")]
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def classification_run(root: Path, run_dir: Path, workers: int, *extra: str) -> list[str]:
    return classification_args(root, run_dir, "--trainer.max_epochs", "2", "--data.init_args.num_workers",
                               str(workers), "--model.init_args.checkpoint_every_n_steps", "1", *extra)


@pytest.fixture(scope="module")
def classification_reference(classification_root, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Two epochs of the classification quickstart (scale-jitter crops, flips), never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    fit(classification_run(classification_root, run_dir, workers=0))
    return final_weights(run_dir)


def test_two_fits_with_the_same_seed_give_identical_weights_for_any_num_workers(
        classification_reference, classification_root, tmp_path):
    fit(classification_run(classification_root, tmp_path, workers=2))
    assert_identical(final_weights(tmp_path), classification_reference)


@pytest.mark.slow
def test_another_seed_gives_other_weights(classification_reference, classification_root, tmp_path):
    # the oracle above is not vacuous: the seed does reach the weights
    fit(classification_run(classification_root, tmp_path, 0, "--seed_everything", "7"))
    weights = final_weights(tmp_path)
    assert any(not torch.equal(weights[k], classification_reference[k]) for k in weights)


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(
        classification_reference, classification_root, tmp_path):
    args = classification_run(classification_root, tmp_path, 2, "--trainer.callbacks", SLOW)
    at_kill = torch.load(fit_killed_mid_run(args, tmp_path, after_step=2), weights_only=True)
    # killed inside the first epoch (4 batches), with the loader's position saved
    loader_state = at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert at_kill["epoch"] == 0 and 2 <= loader_state["batches"] < 4, loader_state
    fit([*args, "--ckpt_path", "last"])
    assert_identical(final_weights(tmp_path), classification_reference)
    versions = sorted(p.name for p in (tmp_path / "lightning_logs").iterdir())
    assert versions == ["version_0"]  # the resumed run kept writing the same log


def dense_run(data: Path, run_dir: Path, logs: Path, workers: int, *extra: str) -> list[str]:
    """Depth quickstart, tiny: 12 rooms in batches of 4 (3 steps an epoch), TensorBoard under ``logs``, not
    under the run root (``--ckpt_path last`` has to look there)."""
    logger = json.dumps({"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(logs)}})
    return ["--config", str(QUICKSTART / "depth.yaml"), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger", logger, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--data.init_args.root", str(data),
            "--data.init_args.synthetic_splits", "{train: 12, val: 4, test: 2}", "--data.init_args.synthetic_size",
            "[36, 48]", "--data.init_args.image_size", "[36, 48]", "--data.init_args.crop_size", "[32, 44]",
            "--data.init_args.batch_size", "4", "--data.init_args.num_workers", str(workers),
            "--model.init_args.checkpoint_every_n_steps", "1", *extra]


@pytest.mark.slow
def test_dense_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Depth with Eigen's augmentation (scale, rotation, crop, flip, colour) and the coarse stack's dropout."""
    data = tmp_path / "rooms"
    fit(dense_run(data, tmp_path / "reference", tmp_path / "reference_logs", workers=0))
    reference = final_weights(tmp_path / "reference_logs")

    args = dense_run(data, tmp_path / "killed", tmp_path / "killed_logs", 2, "--trainer.callbacks", SLOW)
    at_kill = torch.load(fit_killed_mid_run(args, tmp_path / "killed_logs", after_step=1), weights_only=True)
    assert at_kill["epoch"] == 0 and at_kill["global_step"] < 3
    fit([*args, "--ckpt_path", "last"])
    assert_identical(final_weights(tmp_path / "killed_logs"), reference)
