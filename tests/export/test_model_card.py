"""The export's model card and safetensors weights: card values against metrics.json, the Hub's front matter,
bit-exact round trips through create_backbone and load_from_checkpoint, refusals that name the file."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import densecnn
from densecnn.errors import UserError
from tasks import BaseTask, CheckpointError, ClassificationTask, DensePredictionTask, FasterRCNNTask
from tasks.model_card import pipeline_tag, push_to_hub, write_card_and_weights

SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])
CLASSES = ["cat", "dog", "emu"]


def _classifier() -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(backbone="cifar_resnet20", num_classes=3, class_names=CLASSES, lr=0.03).eval()


def _dense(targets=("depth",)) -> DensePredictionTask:
    torch.manual_seed(0)
    return DensePredictionTask(backbone="cifar_resnet20", targets=list(targets), num_classes=4, **SMALL_HEAD).eval()


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def run(tmp_path):
    """A fit run's layout (``<run>/checkpoints/last.ckpt``, ``metrics.json``) and a later ``test`` run of the same
    checkpoint in a sibling version directory, as ``python -m densecnn test --ckpt_path`` leaves them."""
    fit_dir = tmp_path / "lightning_logs" / "version_0"
    ckpt = fit_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    (fit_dir / "metrics.json").write_text(json.dumps({"val/acc1": 0.25, "val/loss": 1.5}))
    config = {"fit": {"data": {"class_path": "tasks.ImageFolderDataModule",
                               "init_args": {"root": "/data/pets", "batch_size": 16}},
                      "model": {"class_path": "tasks.ClassificationTask", "init_args": {"num_classes": 3}}}}
    (fit_dir / "config.yaml").write_text(yaml.safe_dump(config))
    test_dir = tmp_path / "lightning_logs" / "version_1"
    test_dir.mkdir()
    (test_dir / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(ckpt)}))
    metrics = {"test/acc1": 0.8125, "test/acc5": 1.0, "test/loss": 0.4375}
    (test_dir / "metrics.json").write_text(json.dumps(metrics))
    later = time.time() + 5
    os.utime(test_dir / "metrics.json", (later, later))
    unrelated = tmp_path / "lightning_logs" / "version_2"  # another checkpoint's evaluation: not this card's
    unrelated.mkdir()
    (unrelated / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(tmp_path / "other.ckpt")}))
    (unrelated / "metrics.json").write_text(json.dumps({"test/acc1": 0.1}))
    os.utime(unrelated / "metrics.json", (later + 5, later + 5))
    return {"ckpt": ckpt, "config": config, "metrics": metrics}


def test_card_values_come_from_the_checkpoints_last_metrics_json(run, tmp_path):
    task = _classifier()
    written = write_card_and_weights(task, tmp_path / "export", checkpoint_path=run["ckpt"], config=run["config"])
    assert [p.name for p in written] == ["model.safetensors", "README.md"]
    card = (tmp_path / "export" / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "densecnn" and front["pipeline_tag"] == "image-classification"
    assert "license" not in front  # none known
    result = front["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in result["metrics"]} == run["metrics"]  # the newest run of this checkpoint
    assert result["dataset"] == {"name": "/data/pets", "type": "tasks.ImageFolderDataModule"}
    assert sorted(front["metrics"]) == sorted(run["metrics"])
    assert "| test/acc1 | 0.8125 |" in card and "0.1 |" not in card
    assert "tasks.ImageFolderDataModule" in card and "`/data/pets`" in card
    assert "arXiv:1512.03385" in card  # the backbone's paper (ResNet)
    assert yaml.safe_load(card.split("```yaml\n")[1].split("```")[0]) == run["config"]  # the training config


def test_card_without_metrics_says_not_evaluated_and_tags_each_family(tmp_path):
    card = write_card_and_weights(_dense(), tmp_path / "d", checkpoint_path=None, config=None)[1].read_text()
    front = _front_matter(card)
    assert front["pipeline_tag"] == "depth-estimation" and "model-index" not in front
    assert "Not evaluated" in card and "arXiv:1411.4734" in card
    assert pipeline_tag(_dense(("semantic",))) == "image-segmentation"
    detector = FasterRCNNTask(backbone="cifar_resnet20", num_classes=3)
    assert pipeline_tag(detector) == "object-detection"


def test_safetensors_metadata_and_backbone_round_trip_bit_exact(tmp_path):
    task = _classifier()
    path = write_card_and_weights(task, tmp_path, checkpoint_path=None, config=None)[0]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["densecnn_task"] == "ClassificationTask" and meta["densecnn_format_version"] == "1"
    assert json.loads(meta["densecnn_class_names"]) == CLASSES
    hparams = json.loads(meta["densecnn_hparams"])
    assert hparams["num_classes"] == 3 and hparams["lr"] == 0.03 and hparams["weights"] is None
    backbone = densecnn.create_backbone("cifar_resnet20", num_classes=3, weights=str(path))
    expected = task.backbone.state_dict()
    got = backbone.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_plain_safetensors_state_dict_loads_as_backbone_weights(tmp_path):
    source = densecnn.create_backbone("cifar_resnet20", num_classes=3)
    save_file(source.state_dict(), str(tmp_path / "plain.safetensors"))
    loaded = densecnn.create_backbone("cifar_resnet20", num_classes=3, weights=str(tmp_path / "plain.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("make", [_classifier, lambda: _dense(("depth", "normals", "semantic"))])
def test_load_from_checkpoint_rebuilds_the_task_with_equal_outputs(tmp_path, make):
    task = make()
    write_card_and_weights(task, tmp_path, checkpoint_path=None, config=None)
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        expected = task(x)
        for source, cls in [(tmp_path / "model.safetensors", type(task)), (tmp_path, BaseTask)]:
            loaded = cls.load_from_checkpoint(source)
            assert type(loaded) is type(task) and not loaded.training
            got = loaded(x)
            if isinstance(expected, dict):
                assert got.keys() == expected.keys()
                assert all(torch.equal(got[k], expected[k]) for k in expected)
            else:
                assert torch.equal(got, expected)
    assert loaded.class_names == task.class_names


def test_exports_of_another_task_or_without_metadata_are_refused_naming_the_file(tmp_path):
    path = write_card_and_weights(_classifier(), tmp_path, checkpoint_path=None, config=None)[0]
    with pytest.raises(CheckpointError, match=rf"{path}: saved by ClassificationTask, not DensePredictionTask"):
        DensePredictionTask.load_from_checkpoint(path)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match=rf"{plain}: plain weights without densecnn's task metadata"):
        ClassificationTask.load_from_checkpoint(plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=rf"{broken}: not a readable safetensors file"):
        ClassificationTask.load_from_checkpoint(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: a folder without model.safetensors"):
        ClassificationTask.load_from_checkpoint(tmp_path / "empty")


def test_push_to_hub_needs_huggingface_hub_and_uploads_the_folder(tmp_path, monkeypatch):
    write_card_and_weights(_classifier(), tmp_path, checkpoint_path=None, config=None)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(UserError, match="pip install huggingface_hub"):
        push_to_hub(tmp_path, "me/model")
    monkeypatch.undo()
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))
            return "https://hub/commit/1"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert push_to_hub(tmp_path, "me/model", token="t") == "https://hub/commit/1"
    assert calls == [("init", "t"), ("create", "me/model", True), ("upload", str(tmp_path), "me/model")]
