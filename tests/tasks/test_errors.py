"""A user's mistake on the command line gets one message that names the file or key, a hint and exit code 2:
no Python traceback, nothing written; ``DENSECNN_DEBUG=1`` shows the traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.cli import run
from tests.helpers import QUICKSTART, classification_args, run_fresh


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = run(args)
    except SystemExit as exit_:  # the argument parser's own errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(classification_root, tmp_path_factory) -> Path:
    from tasks.cli import main

    run_dir = tmp_path_factory.mktemp("run")
    fit = main(["fit", *classification_args(classification_root, run_dir)])
    return Path(fit.trainer.checkpoint_callback.best_model_path)


def _cases(root: Path, checkpoint: Path, tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name: (command line, what the message must name)."""
    (tmp / "bad.yaml").write_text("trainer: [max_epochs\n")
    (tmp / "truncated.ckpt").write_bytes(checkpoint.read_bytes()[:4096])
    corrupt = tmp / "corrupt_data"
    shutil.copytree(root, corrupt)
    broken = next((corrupt / "train").rglob("*.png"))
    broken.write_bytes(b"not a png")
    base = classification_args(root, tmp / "runs")
    config = str(QUICKSTART / "classification.yaml")
    depth = ["--config", str(QUICKSTART / "depth.yaml"), "--trainer.default_root_dir", str(tmp / "runs")]
    return {
        "missing config": (["fit", "--config", str(tmp / "nope.yaml")], ["nope.yaml", "does not exist"]),
        "config not YAML": (["fit", "--config", str(tmp / "bad.yaml")], ["bad.yaml", "not a valid YAML"]),
        "unknown key": (["fit", *base, "--model.init_args.num_clases", "6"],
                        ["model.init_args.num_clases", "did you mean num_classes"]),
        "bad type": (["fit", *base, "--trainer.max_epochs", "many"], ["trainer.max_epochs", "int"]),
        "bad choice": (["fit", *base, "--model.init_args.optimizer", "adam"], ["optimizer", "sgd", "adamw"]),
        "unknown backbone": (["fit", *base, "--model.init_args.backbone", "resnet9000"],
                             ["unknown backbone 'resnet9000'"]),
        "missing data root": (["fit", *base, "--data.init_args.root", str(tmp / "nodata"),
                               "--data.init_args.synthetic", "false"], ["data.init_args.root", "nodata"]),
        "classes differ from the data": (["fit", *base, "--model.init_args.num_classes", "3"],
                                         ["num_classes is 3", "6 classes"]),
        "missing weights file": (["fit", *base, "--model.init_args.weights", str(tmp / "nope.pth")],
                                 ["nope.pth", "not found"]),
        "corrupt image": (["fit", *classification_args(corrupt, tmp / "runs")], [broken.name]),
        "generic optimizer": (["fit", *base, "--optimizer", "Adam"], ["--optimizer", "model.init_args.optimizer"]),
        "missing checkpoint": (["test", *base, "--ckpt_path", str(tmp / "nope.ckpt")], ["nope.ckpt", "not found"]),
        "truncated checkpoint": (["test", *base, "--ckpt_path", str(tmp / "truncated.ckpt")],
                                 ["truncated.ckpt", "truncated"]),
        "checkpoint of another task": (["test", *depth, "--ckpt_path", str(checkpoint)],
                                       [checkpoint.name, "saved by ClassificationTask", "DensePredictionTask"]),
        "checkpoint with another class count": (["predict", *base, "--ckpt_path", str(checkpoint),
                                                 "--model.init_args.num_classes", "2"],
                                                [checkpoint.name, "num_classes=6", "num_classes=2"]),
        "checkpoint with another backbone": (["validate", "--config", config, *base[2:], "--ckpt_path",
                                              str(checkpoint), "--model.init_args.backbone", "resnet18"],
                                             [checkpoint.name, "cifar_resnet20", "resnet18"]),
    }


CASES = ["missing config", "config not YAML", "unknown key", "bad type", "bad choice", "unknown backbone",
         "missing data root", "classes differ from the data", "missing weights file", "corrupt image",
         "generic optimizer", "missing checkpoint", "truncated checkpoint", "checkpoint of another task",
         "checkpoint with another class count", "checkpoint with another backbone"]


@pytest.mark.parametrize("case", CASES)
def test_user_errors_print_one_message_naming_the_culprit(case, classification_root, checkpoint, tmp_path, capsys):
    args, named = _cases(classification_root, checkpoint, tmp_path)[case]
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("densecnn: error: "), err
    assert len(err.strip().splitlines()) == 2 and "hint:" in err, err
    for text in named:
        assert text in err, f"{text!r} not in: {err}"
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # failed before anything was trained or saved


def test_the_console_command_prints_no_traceback_and_debug_shows_it(checkpoint, tmp_path):
    args = ["-m", "densecnn", "test", "--config", str(QUICKSTART / "video.yaml"), "--ckpt_path", str(checkpoint),
            "--trainer.default_root_dir", str(tmp_path)]
    result = run_fresh(args, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "saved by ClassificationTask" in result.stderr and "VideoClassificationTask" in result.stderr

    import os

    os.environ["DENSECNN_DEBUG"] = "1"
    try:
        debug = run_fresh(args, timeout=300)
    finally:
        del os.environ["DENSECNN_DEBUG"]
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def test_a_plain_run_prints_no_warning(classification_root, tmp_path):
    """Warnings printed on every run (Lightning's tips, library deprecations, the args/command-line warning)
    drown the ones that matter."""
    args = ["-m", "densecnn", "fit", *classification_args(classification_root, tmp_path, "--trainer.log_every_n_steps",
                                                          "1")]
    result = run_fresh(args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [line for line in result.stderr.splitlines() if ".py:" in line or "Tip" in line or "Warning" in line]
    assert not noise, noise
