"""Each logger's run gets its own metrics.json, pictures and predictions (never the working directory), and
pictures are logged at the global step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.cli import main as cli
from tasks.utils import local_log_dir
from tests.helpers import classification_args

LOGGERS = {
    "tensorboard": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": {"save_dir": "logs"}},
    "csv": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "logs"}},
    "wandb": {"class_path": "pytorch_lightning.loggers.WandbLogger",
              "init_args": {"save_dir": "logs", "project": "densecnn", "offline": True}},
    "mlflow": {"class_path": "pytorch_lightning.loggers.MLFlowLogger",
               "init_args": {"experiment_name": "densecnn", "tracking_uri": "file:logs/mlruns",
                             "save_dir": "logs/mlruns"}},
}


@pytest.mark.parametrize("name", list(LOGGERS))
def test_every_logger_gets_artifacts_in_its_own_run_directory(name, classification_root, tmp_path, monkeypatch):
    pytest.importorskip({"wandb": "wandb", "mlflow": "mlflow"}.get(name, "pytorch_lightning"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = json.dumps(LOGGERS[name])
    fit = cli(["fit", *classification_args(classification_root, tmp_path / "root"), "--trainer.logger", logger])
    run_dir = local_log_dir(fit.trainer)
    best = fit.trainer.checkpoint_callback.best_model_path
    assert Path(best).parent.parent == run_dir  # beside the checkpoints Lightning writes for this logger
    assert (tmp_path / "logs") in run_dir.resolve().parents or run_dir.resolve().is_relative_to(tmp_path / "logs")
    if name in ("wandb", "mlflow"):
        assert run_dir.name == str(fit.trainer.logger.version)  # the run's id, not the shared save_dir
    pictures = sorted(p.name for p in (run_dir / "pictures").glob("*.png"))
    assert pictures == ["val_examples_epoch000.png"]

    if name == "wandb":  # one process, two runs: the CLI's processes would each start their own
        import wandb

        wandb.finish()
    test = cli(["test", *classification_args(classification_root, tmp_path / "root"), "--trainer.logger", logger,
                "--ckpt_path", best])
    test_dir = local_log_dir(test.trainer)
    assert test_dir != run_dir and json.loads((test_dir / "metrics.json").read_text())["test/acc1"] >= 0
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "pictures").exists()  # nothing in the cwd


def test_pictures_are_logged_at_the_global_step(classification_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit = cli(["fit", *classification_args(classification_root, tmp_path, "--trainer.max_epochs", "2")])
    events = EventAccumulator(str(fit.trainer.log_dir), size_guidance={"images": 0})
    events.Reload()
    steps = [image.step for image in events.Images("val/examples")]
    assert steps == [4, 8]  # 4 steps an epoch: the pictures line up with the curves, not with epoch numbers
