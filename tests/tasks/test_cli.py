"""``python -m densecnn``: fit/validate/test/predict end to end, resume, reload, errors, loggers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tasks import ClassificationTask, ImageFolderDataModule
from tasks.cli import main as cli
from tests.helpers import QUICKSTART, classification_args, run_fresh


@pytest.fixture(scope="module")
def trained_run(classification_root, tmp_path_factory):
    """One short fit shared by the tests below: returns (run_dir, log_dir, best checkpoint)."""
    run_dir = tmp_path_factory.mktemp("run")
    fit = cli(["fit", *classification_args(classification_root, run_dir, "--trainer.max_epochs", "2")])
    return run_dir, Path(fit.trainer.log_dir), Path(fit.trainer.checkpoint_callback.best_model_path)


def test_fit_leaves_checkpoints_config_and_pictures(trained_run):
    run_dir, log_dir, best = trained_run
    checkpoints = log_dir / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and best.parent == checkpoints and best.name.startswith("best-")
    saved = (log_dir / "config.yaml").read_text()
    assert "ClassificationTask" in saved and "seed_everything: 42" in saved
    assert list((log_dir / "pictures").glob("val_examples_epoch*.png"))
    assert list(log_dir.glob("events.out.tfevents.*"))  # TensorBoard is the default logger
    hparams = torch.load(best, weights_only=True)["hyper_parameters"]
    assert hparams["class_names"] == ["bars", "cross", "disk", "ring", "square", "triangle"]


def test_test_and_predict_write_metrics_and_csv(trained_run, classification_root):
    run_dir, _, best = trained_run
    test = cli(["test", *classification_args(classification_root, run_dir), "--ckpt_path", str(best)])
    test_dir = Path(test.trainer.log_dir)
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert {"test/acc1", "test/acc5", "test/loss", "test/acc_class/disk"} <= set(metrics)
    assert 0.0 <= metrics["test/acc1"] <= metrics["test/acc5"] <= 1.0
    assert (test_dir / "confusion_matrix.csv").read_text().startswith("true \\ predicted,bars,cross")
    assert list((test_dir / "pictures").glob("test_confusion_matrix_*.png"))

    predict = cli(["predict", *classification_args(classification_root, run_dir), "--ckpt_path", str(best)])
    out = Path(predict.trainer.log_dir) / "predictions"
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 24 and (out / "preview.png").is_file()
    assert {r["label"] for r in rows} <= {"bars", "cross", "disk", "ring", "square", "triangle"}
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)
    # the CSV's label is the argmax of its probabilities
    row = rows[0]
    probs = {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")}
    assert max(probs, key=probs.get) == row["label"]


def test_validate_writes_metrics_json(trained_run, classification_root):
    run_dir, _, best = trained_run
    validate = cli(["validate", *classification_args(classification_root, run_dir), "--ckpt_path", str(best)])
    metrics = json.loads((Path(validate.trainer.log_dir) / "metrics.json").read_text())
    assert {"val/acc1", "val/acc5", "val/loss"} <= set(metrics)


def test_fit_resumes_from_last_checkpoint_in_the_same_log_version(classification_root, tmp_path):
    cli(["fit", *classification_args(classification_root, tmp_path, "--trainer.max_epochs", "1")])
    last_path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    first = torch.load(last_path, weights_only=True)
    resumed = cli(["fit", *classification_args(classification_root, tmp_path, "--trainer.max_epochs", "2"),
                   "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 2
    # the resumed run continues version_0 (its curves are not split) and records the checkpoint it resolved
    assert Path(resumed.trainer.log_dir) == tmp_path / "lightning_logs" / "version_0"
    assert not (tmp_path / "lightning_logs" / "version_1").exists()
    assert f"ckpt_path: {last_path}" in (tmp_path / "lightning_logs/version_0/config.yaml").read_text()
    last = torch.load(last_path, weights_only=True)
    assert last["global_step"] == 2 * first["global_step"]
    assert sorted(p.name for p in last_path.parent.glob("last*.ckpt")) == ["last.ckpt"]


def test_reloaded_checkpoint_gives_identical_metrics_and_predictions_in_a_fresh_process(
        trained_run, classification_root, tmp_path):
    run_dir, _, best = trained_run
    # this process: metrics from the CLI, probabilities from load_from_checkpoint
    here = cli(["test", *classification_args(classification_root, tmp_path / "a"), "--ckpt_path", str(best)])
    metrics_here = json.loads((Path(here.trainer.log_dir) / "metrics.json").read_text())
    task = ClassificationTask.load_from_checkpoint(best).eval()
    dm = ImageFolderDataModule(str(classification_root), image_size=32, train_transforms="small")
    dm.setup("test")
    images = torch.stack([dm.test_set[i]["image"] for i in range(8)])
    with torch.no_grad():
        probs_here = task.predict_probs(images)
    torch.save(images, tmp_path / "images.pt")

    script = (
        "import json, sys, torch\n"
        "from tasks import ClassificationTask\n"
        "from tasks.cli import main\n"
        f"task = ClassificationTask.load_from_checkpoint({str(best)!r}).eval()\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        f"    torch.save(task.predict_probs(images), {str(tmp_path / 'probs.pt')!r})\n"
        f"print(task.class_names)\n"
    )
    result = run_fresh(["-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "probs.pt", weights_only=True), probs_here)
    assert "'bars', 'cross', 'disk'" in result.stdout

    args = classification_args(classification_root, tmp_path / "b", "--ckpt_path", str(best))
    result = run_fresh(["-m", "densecnn", "test", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics_file = next((tmp_path / "b").rglob("metrics.json"))
    assert json.loads(metrics_file.read_text()) == metrics_here


def test_unknown_config_key_is_named(classification_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["fit", *classification_args(classification_root, tmp_path), "--model.init_args.num_clases", "6"])
    assert exit_info.value.code != 0
    assert "num_clases" in capsys.readouterr().err


def test_unknown_backbone_fails_before_training(classification_root, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        cli(["fit", *classification_args(classification_root, tmp_path), "--model.init_args.backbone", "resnet9000"])


def test_csv_logger_does_not_crash_and_pictures_are_saved(classification_root, tmp_path):
    fit = cli(["fit", *classification_args(classification_root, tmp_path), "--trainer.logger",
               "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)])
    log_dir = Path(fit.trainer.log_dir)
    assert (log_dir / "metrics.csv").is_file() and list((log_dir / "pictures").glob("*.png"))


def test_help_and_print_config_work_from_the_command_line():
    result = run_fresh(["-m", "densecnn", "--help"], timeout=120)
    assert result.returncode == 0 and "fit" in result.stdout and "predict" in result.stdout
    result = run_fresh(["-m", "densecnn", "fit", "--config", str(QUICKSTART / "classification.yaml"),
                        "--print_config"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: tasks.ClassificationTask" in result.stdout and "backbone: cifar_resnet20" in result.stdout


def test_predict_without_a_logger_writes_under_the_root_dir(trained_run, classification_root, tmp_path):
    _, _, best = trained_run
    cli(["predict", *classification_args(classification_root, tmp_path), "--ckpt_path", str(best),
         "--trainer.logger", "false"])
    assert (tmp_path / "predictions" / "predictions.csv").is_file()
