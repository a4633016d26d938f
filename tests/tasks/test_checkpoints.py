"""Checkpoints: atomic writes, a last.ckpt that is always current, finding and falling back, identity and
precedence of arguments, the user's own callbacks, and reading from fsspec paths and URLs."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import fsspec
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from tasks import ClassificationTask
from tasks.checkpoints import (AtomicCheckpointIO, CheckpointError, LastCheckpoint, find_last_checkpoint,
                               read_checkpoint)
from tasks.cli import main as cli
from tests.helpers import classification_args


@pytest.fixture(scope="module")
def fitted(classification_root, tmp_path_factory):
    """Three epochs of the classification quickstart, with last.ckpt rewritten every step."""
    run_dir = tmp_path_factory.mktemp("run")
    fit = cli(["fit", *classification_args(classification_root, run_dir, "--trainer.max_epochs", "3",
                                           "--model.init_args.checkpoint_every_n_steps", "1")])
    return fit, Path(fit.trainer.log_dir)


def test_last_checkpoint_is_the_end_of_training_whatever_the_best_was(fitted):
    fit, log_dir = fitted
    last = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == fit.trainer.global_step == 12 and last["epoch"] == 2
    weights = fit.model.state_dict()
    assert all(torch.equal(last["state_dict"][k], weights[k]) for k in weights)
    assert [cb for cb in fit.trainer.callbacks if isinstance(cb, LastCheckpoint)]
    assert any(isinstance(cb, LearningRateMonitor) for cb in fit.trainer.callbacks)  # a logger is present
    assert sorted(p.name for p in (log_dir / "checkpoints").glob("last*")) == ["last.ckpt"]
    assert isinstance(fit.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_last_checkpoint_follows_training_when_the_metric_stops_improving(classification_root, tmp_path):
    """With lr 0 the validation accuracy never improves after epoch 0: Lightning's own save_last would keep
    the epoch-0 last.ckpt, and a resume would lose every later epoch."""
    fit = cli(["fit", *classification_args(classification_root, tmp_path, "--trainer.max_epochs", "3",
                                           "--model.init_args.lr", "0", "--model.init_args.checkpoint_every_n_minutes",
                                           "null")])
    last = torch.load(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == fit.trainer.global_step == 12


def test_a_users_checkpoint_callback_is_kept_and_ours_are_not_added(classification_root, tmp_path):
    callbacks = ('[{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": '
                 f'{{"dirpath": "{tmp_path / "mine"}", "every_n_train_steps": 2, "save_top_k": -1}}}}]')
    fit = cli(["fit", *classification_args(classification_root, tmp_path, "--trainer.callbacks", callbacks)])
    checkpoints = [cb for cb in fit.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(checkpoints) == 1 and checkpoints[0].dirpath == str(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]


def test_atomic_write_keeps_the_old_checkpoint_when_a_save_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def dies(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_with_a_warning(fitted, tmp_path):
    _, log_dir = fitted
    old = tmp_path / "version_0" / "last.ckpt"
    new = tmp_path / "version_1" / "last.ckpt"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes((log_dir / "checkpoints" / "last.ckpt").read_bytes())
    new.write_bytes(new.read_bytes()[:1000])  # newest, and truncated
    with pytest.warns(UserWarning, match="falling back"):
        assert find_last_checkpoint([tmp_path]) == old.resolve()


def test_evaluating_a_checkpoint_needs_neither_the_pretrained_file_nor_its_options(classification_root, tmp_path):
    from densecnn import create_backbone

    weights = tmp_path / "pretrained.pth"
    torch.save(create_backbone("cifar_resnet20", num_classes=6).state_dict(), weights)
    fit = cli(["fit", *classification_args(classification_root, tmp_path / "a", "--model.init_args.weights",
                                           str(weights))])
    best = fit.trainer.checkpoint_callback.best_model_path
    weights.unlink()  # gone, as on another machine
    test = cli(["test", *classification_args(classification_root, tmp_path / "b", "--model.init_args.weights",
                                             str(weights)), "--ckpt_path", best])
    assert test.model.hparams.weights is None
    # explicit arguments beat the checkpoint's hyper-parameters: TTA given on the command line is used
    predict = cli(["predict", *classification_args(classification_root, tmp_path / "c"), "--ckpt_path", best,
                   "--model.init_args.tta", "multi_scale", "--model.init_args.tta_scales", "[32, 40]"])
    assert predict.model.hparams.tta == "multi_scale" and predict.model.hparams.tta_scales == [32, 40]
    # what the command line leaves out comes from the checkpoint (its class names), not from defaults
    assert predict.model.hparams.class_names == fit.model.hparams.class_names


def test_load_from_checkpoint_reads_fsspec_paths_and_urls(fitted, tmp_path):
    _, log_dir = fitted
    local = log_dir / "checkpoints" / "last.ckpt"
    reference = ClassificationTask.load_from_checkpoint(local).state_dict()

    with fsspec.open("memory://checkpoints/last.ckpt", "wb") as f:
        f.write(local.read_bytes())
    from_memory = ClassificationTask.load_from_checkpoint("memory://checkpoints/last.ckpt").state_dict()
    assert all(torch.equal(from_memory[k], reference[k]) for k in reference)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(local.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/last.ckpt"
        torch.hub.set_dir(str(tmp_path / "hub"))
        from_url = ClassificationTask.load_from_checkpoint(url).state_dict()
        assert all(torch.equal(from_url[k], reference[k]) for k in reference)
        with pytest.raises(CheckpointError, match="nope.ckpt"):
            ClassificationTask.load_from_checkpoint(f"http://127.0.0.1:{server.server_port}/nope.ckpt")
    finally:
        server.shutdown()


def test_a_checkpoint_url_given_to_the_trainer_is_not_unpickled(fitted, tmp_path, monkeypatch):
    """Lightning reads ``ckpt_path`` URLs with ``weights_only=False``; ours must refuse a pickle that carries code
    instead of running it (here a reference to ``os.system``, which must never be resolved)."""
    import os

    fit, log_dir = fitted
    evil = torch.load(log_dir / "checkpoints" / "last.ckpt", weights_only=True)
    evil["payload"] = os.system
    served = tmp_path / "served"
    served.mkdir()
    torch.save(evil, served / "evil.ckpt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    torch.hub.set_dir(str(tmp_path / "hub"))
    url = f"http://127.0.0.1:{server.server_port}/evil.ckpt"
    try:
        # Lightning's own reader would resolve the payload (what the test guards against)
        from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
        assert TorchCheckpointIO().load_checkpoint(url)["payload"] is os.system
        with pytest.raises(Exception, match="weights_only|Unsupported global|system"):
            AtomicCheckpointIO().load_checkpoint(url)
        trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
        with pytest.raises(Exception, match="weights_only|Unsupported global|os.system|posix.system"):
            trainer.fit(fit.model, datamodule=fit.datamodule,
                        ckpt_path=url)
    finally:
        server.shutdown()


def test_an_undefined_metric_never_becomes_the_best_checkpoint(tmp_path):
    """An epoch without ground truth logs -1 ("undefined"); for a minimised error that must rank worst, not best
    (Lightning's own ModelCheckpoint picks the -1 epoch)."""
    from torch.utils.data import DataLoader, TensorDataset

    from tasks.checkpoints import BestCheckpoint

    class Scripted(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/depth/rmse", [0.8, -1.0, 0.9, 0.5][self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)
    ours = BestCheckpoint(monitor="val/depth/rmse", mode="min", dirpath=tmp_path / "ours")
    plain = ModelCheckpoint(monitor="val/depth/rmse", mode="min", dirpath=tmp_path / "plain")
    scores = []
    for callback in (ours, plain):
        trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
        trainer.fit(Scripted(), data, data)
        scores.append(float(callback.best_model_score))
    assert scores == [pytest.approx(0.8), pytest.approx(-1.0)]
