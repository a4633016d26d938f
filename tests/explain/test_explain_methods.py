"""``python -m densecnn explain topk|layer_stats|maximise|fool`` on a one-step classification checkpoint, checked
against recomputations from the checkpoint: the top activations against a brute-force search over the test
images, the response stds against ``layer_response_std``, the maximised and adversarial images (read back from
their PNG files) against forward passes and the original test files; the families each method refuses; and the
input shown under a heat map against the test image file, with a normalisation other than ImageNet's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from densecnn.data import read_rgb
from densecnn.errors import UserError
from tests.explain import test_explain_command as command
from tests.explain.test_explain_command import (
    LENET,
    _check_folder,
    _dense_task,
    _explain,
)
from tests.helpers import QUICKSTART

#: the one-step LeNet-5 checkpoint of the quickstart classification config (the command tests' fixture)
classification_checkpoint = command.classification_checkpoint

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the quickstart DataModule's default mean and std


def _common(checkpoint: Path, root: Path, *extra: str) -> tuple[str, ...]:
    return ("--config", str(QUICKSTART / "classification.yaml"), "--ckpt_path", str(checkpoint),
            "--data.init_args.root", str(root), *LENET, *extra)


def _task(checkpoint: Path):
    from tasks import ClassificationTask

    return ClassificationTask.load_from_checkpoint(checkpoint).eval()


def _test_set(root: Path, mean=IMAGENET[0], std=IMAGENET[1]):
    """The test split as the command reads it: images (normalised), labels and file paths, in loader order."""
    from tasks.datamodules.image_folder import ImageFolderDataModule

    datamodule = ImageFolderDataModule(str(root), image_size=32, batch_size=64, num_workers=0,
                                       train_transforms="small", mean=mean, std=std)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    return batch["image"], batch["label"], list(batch["path"])


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    return (pixels - mean) / std


def _png(path: Path) -> torch.Tensor:
    return torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1).float()[None] / 255


def _entries(folder: Path) -> list[dict]:
    return json.loads((folder / "pictures.json").read_text())


def test_topk_stores_the_true_maxima(classification_checkpoint, classification_root, capsys, tmp_path):
    code, out, err = _explain(capsys, "topk", *_common(classification_checkpoint, classification_root),
                              "--layers", "s2", "backbone.c3", "--k", "3", "--channels", "0", "2-3",
                              "--num-images", "20", "--output", str(tmp_path))
    assert code == 0, err
    entries = _check_folder(tmp_path, out, 2)
    assert [e["name"] for e in entries] == ["topk_s2", "topk_c3"]
    # the oracle: every image's maximum over positions per channel, sorted over the first 20 images by hand
    task = _task(classification_checkpoint)
    images = _test_set(classification_root)[0][:20]
    maps = {}
    hooks = [task.backbone.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: maps.__setitem__(n, o.detach())) for n in ("s2", "c3")]
    with torch.no_grad():
        task(images)
    for h in hooks:
        h.remove()
    for entry, layer in zip(entries, ("s2", "c3")):
        details = entry["details"]
        assert details["layer"] == layer and sorted(details["channels"], key=int) == ["0", "2", "3"]
        for channel, stored in details["channels"].items():
            per_image = maps[layer][:, int(channel)].flatten(1).max(dim=1).values
            values, ids = per_image.topk(3)
            assert [s["image"] for s in stored] == ids.tolist()
            assert [s["value"] for s in stored] == pytest.approx(values.tolist(), abs=1e-5)
            for s in stored:  # the stored position holds that maximum
                y, x = s["position"]
                assert float(maps[layer][s["image"], int(channel), y, x]) == pytest.approx(s["value"], abs=1e-5)


def test_layer_stats_compares_two_checkpoints(classification_checkpoint, classification_root, capsys, tmp_path):
    from densecnn.explain import layer_response_std

    other = tmp_path / "other" / "checkpoints" / "last.ckpt"  # a second checkpoint: the first conv's kernels x3
    other.parent.mkdir(parents=True)
    saved = torch.load(classification_checkpoint, map_location="cpu", weights_only=True)
    saved["state_dict"]["backbone.c1.weight"] *= 3
    torch.save(saved, other)
    code, out, err = _explain(capsys, "layer_stats", *_common(classification_checkpoint, classification_root),
                              "--num-images", "12", "--compare", str(other), "--output", str(tmp_path / "o"))
    assert code == 0, err
    (entry,) = _check_folder(tmp_path / "o", out, 1)
    models = entry["details"]["models"]
    assert entry["details"]["images"] == 12 and list(models)[1] == "other/last.ckpt"
    images = _test_set(classification_root)[0][:12]
    for label, checkpoint in zip(models, (classification_checkpoint, other)):
        expected = layer_response_std(_task(checkpoint).backbone, images)
        assert models[label] == pytest.approx(expected, rel=1e-5)
    first, second = models.values()
    assert second["c1"] == pytest.approx(3 * first["c1"], rel=1e-4)  # a linear layer's responses scale with it
    code, _, err = _explain(capsys, "topk", *_common(classification_checkpoint, classification_root),
                            "--compare", str(other))
    assert code == 2 and "--compare" in err


def test_maximise_reports_what_the_saved_images_score(classification_checkpoint, classification_root, capsys,
                                                      tmp_path):
    task = _task(classification_checkpoint)
    code, out, err = _explain(capsys, "maximise", *_common(classification_checkpoint, classification_root),
                              "--target", f"{task.class_names[1]},4", "--steps", "15", "--output", str(tmp_path))
    assert code == 0, err
    (entry,) = _check_folder(tmp_path, out, 1)
    targets = entry["details"]["targets"]
    assert [t["class_index"] for t in targets] == [1, 4]
    for t in targets:  # a forward pass on the saved pixels (PNG: within 1/510 per pixel)
        pixels = _png(tmp_path / t["file"])
        assert pixels.shape == (1, 3, 32, 32)  # the test images' size
        with torch.no_grad():
            p = task(_normalise(pixels)).softmax(dim=1)[0, t["class_index"]]
        assert t["probability"] == pytest.approx(float(p), abs=2e-3)
    # channel targets of a backbone layer: the objective is that channel's mean activation on the image
    code, out, err = _explain(capsys, "maximise", *_common(classification_checkpoint, classification_root),
                              "--layers", "s2", "--channels", "1", "--steps", "15", "--output", str(tmp_path / "ch"))
    assert code == 0, err
    (target,) = _check_folder(tmp_path / "ch", out, 1)[0]["details"]["targets"]
    seen = {}
    hook = task.backbone.s2.register_forward_hook(lambda m, a, o: seen.__setitem__("s2", o))
    with torch.no_grad():
        task(_normalise(_png(tmp_path / "ch" / target["file"])))
    hook.remove()
    assert target["target"] == "s2 ch1" and target["objective"] == pytest.approx(float(seen["s2"][0, 1].mean()),
                                                                                  abs=2e-3)


def test_fool_flips_within_the_budget(classification_checkpoint, classification_root, capsys, tmp_path):
    epsilon = 0.06
    code, out, err = _explain(capsys, "fool", *_common(classification_checkpoint, classification_root),
                              "--num-images", "2", "--epsilon", str(epsilon), "--steps", "12",
                              "--output", str(tmp_path))
    assert code == 0, err
    adversarial, noise = _check_folder(tmp_path, out, 2)
    task = _task(classification_checkpoint)
    images, labels, paths = _test_set(classification_root)
    with torch.no_grad():
        predicted = task(images).argmax(dim=1)
    correct = (predicted == labels).nonzero().flatten().tolist()
    examples = adversarial["details"]["examples"]
    assert [e["image"] for e in examples] == correct[:2]  # the first correctly classified test images
    for e in examples:
        assert e["label"] == int(labels[e["image"]]) and e["target"] == (e["label"] + 1) % 6  # the next class
        assert e["budget"] <= epsilon + 1e-6 and (not e["success"] or e["predicted"] == e["target"])
        assert f"test image {e['image']}: " in out and f"budget {e['budget']:.4f} <= {epsilon:.4f}" in out
        # the saved adversarial image against the original file: every pixel moved by at most epsilon
        saved = read_rgb(tmp_path / e["file"]).astype(int)
        original = read_rgb(paths[e["image"]]).astype(int)
        assert np.abs(saved - original).max() <= epsilon * 255 + 1
        with torch.no_grad():
            p = task(_normalise(_png(tmp_path / e["file"]))).softmax(dim=1)[0]
        assert e["target_confidence"] == pytest.approx(float(p[e["target"]]), abs=5e-3)
    assert sorted(f["target"] for f in noise["details"]["images"]) == sorted({e["target"] for e in examples})


def test_unsupported_families_are_refused():
    from tasks import VideoClassificationTask
    from tasks.explain import explain_fool, explain_maximise, explain_topk

    dense = _dense_task()
    video = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                    backbone_kwargs={"width_mult": 0.125, "batch_norm": True, "dropout": 0.0})
    with pytest.raises(UserError, match="topk: .*video"):
        explain_topk(video, None)
    for task in (dense, video):
        with pytest.raises(UserError, match="fool: .*classifier"):
            explain_fool(task, None)
        with pytest.raises(UserError, match="maximise: "):
            explain_maximise(task, None)
    with pytest.raises(UserError, match="--layers L --channels"):  # a dense model: channels only
        explain_maximise(dense, None, target="3")


def test_the_input_under_a_heat_map_is_the_test_image(classification_checkpoint, classification_root, capsys,
                                                      tmp_path, monkeypatch):
    """With a DataModule mean/std other than ImageNet's (the fallback of ``task.normalisation()``), the input panel
    shows the test file's pixels: the command undoes the normalisation the pipeline applied."""
    from tasks import explain

    shown = []
    original = explain.figure_to_array

    def record(fig, **kwargs):
        shown.append(np.asarray(fig.axes[0].images[0].get_array()))
        return original(fig, **kwargs)

    monkeypatch.setattr(explain, "figure_to_array", record)
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.2, 0.25)
    code, _, err = _explain(capsys, "saliency", *_common(classification_checkpoint, classification_root),
                            "--num-images", "3", "--data.init_args.mean", str(list(mean)),
                            "--data.init_args.std", str(list(std)), "--output", str(tmp_path))
    assert code == 0, err
    paths = _test_set(classification_root, mean, std)[2][:3]
    assert len(shown) == 3
    for image, path in zip(shown, paths):
        assert np.abs(image.astype(int) - read_rgb(path).astype(int)).max() <= 1


class _Batches:
    """A DataModule stand-in for the notebook form of the methods: fixed test batches."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def setup(self, stage: str) -> None:
        pass

    def test_dataloader(self) -> list[dict]:
        return self.batches


def test_dense_and_video_tasks_use_their_backbone_on_their_inputs():
    from densecnn.explain import layer_response_std
    from tasks import VideoClassificationTask
    from tasks.explain import explain_layer_stats, explain_topk

    torch.manual_seed(0)
    dense = _dense_task()
    images = torch.randn(4, 3, 32, 40)
    data = _Batches([{"image": images[:2]}, {"image": images[2:]}])
    (picture,) = explain_layer_stats(dense, data, num_images=3)
    assert picture.details["models"]["this checkpoint"] == pytest.approx(layer_response_std(dense.backbone,
                                                                                             images[:3]))
    (top,) = explain_topk(dense, data, layers=["c3"], k=2, channels=["1"], progress=False)
    with torch.no_grad():
        maps = {}
        hook = dense.backbone.c3.register_forward_hook(lambda m, a, o: maps.__setitem__("c3", o))
        dense.backbone(images)
        hook.remove()
    ids = maps["c3"][:, 1].flatten(1).max(dim=1).values.topk(2).indices
    assert [s["image"] for s in top.details["channels"]["1"]] == ids.tolist()
    video = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                    backbone_kwargs={"width_mult": 0.125, "batch_norm": True, "dropout": 0.0})
    videos = torch.randn(2, 3, 3, 8, 28, 28)  # two videos of three evaluation clips: the middle one is measured
    (picture,) = explain_layer_stats(video, _Batches([{"video": videos}]))
    assert picture.details["models"]["this checkpoint"] == pytest.approx(layer_response_std(video.backbone,
                                                                                             videos[:, 1]))
