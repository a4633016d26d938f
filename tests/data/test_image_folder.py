"""ImageFolder data: the synthetic generator, the dataset, the presets and every bad-input path."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from densecnn.data import DataError, ImageFolderDataset, PCALighting, build_pipeline, rgb_pca
from densecnn.data.synthetic import CLASSIFICATION_CLASSES, write_classification_dataset, write_atomically
from tasks import ImageFolderDataModule


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_synthetic_dataset_is_deterministic_and_complete(tmp_path):
    sizes = {"train": 3, "val": 2}
    a = write_classification_dataset(tmp_path / "a", per_class=sizes)
    b = write_classification_dataset(tmp_path / "b", per_class=sizes)
    assert _digest(a) == _digest(b)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(CLASSIFICATION_CLASSES)
    assert len(list(a.rglob("*.png"))) == 5 * len(CLASSIFICATION_CLASSES)
    # colour carries no class information: mean colours of two classes overlap broadly
    means = {c: np.mean([np.asarray(__import__("PIL.Image").Image.open(p)).mean() for p in (a / "train" / c).iterdir()])
             for c in CLASSIFICATION_CLASSES}
    assert max(means.values()) - min(means.values()) < 80


def test_interrupted_generation_leaves_nothing(tmp_path):
    def fail(folder: Path) -> None:
        (folder / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "data", fail)
    assert not (tmp_path / "data").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_existing_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="non-empty"):
        write_classification_dataset(tmp_path / "data")
    assert (tmp_path / "data" / "mine.txt").read_text() == "keep"


def test_dataset_items_and_labels(classification_root):
    ds = ImageFolderDataset(classification_root / "val", transform=build_pipeline("small", image_size=32, train=False))
    assert len(ds) == 4 * len(CLASSIFICATION_CLASSES)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert ds.class_names[item["label"]] == Path(item["path"]).parent.name


def _copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target


def test_corrupt_image_is_named_or_skipped(classification_root, tmp_path):
    root = _copy(classification_root, tmp_path)
    bad = root / "val" / "disk" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = ImageFolderDataset(root / "val")
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match="broken.png"):
        ds[index]
    with pytest.warns(UserWarning, match="broken.png"):
        skipped = ImageFolderDataset(root / "val", skip_corrupt=True)
    assert str(bad) not in [p for p, _ in skipped.samples] and len(skipped) == len(ds) - 1


def test_empty_class_folder_and_unknown_class(classification_root, tmp_path):
    root = _copy(classification_root, tmp_path)
    (root / "val" / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no images|do not exist in the training split"):
        ImageFolderDataset(root / "val", class_names=None)
    with pytest.raises(DataError, match="'empty'"):
        ImageFolderDataset(root / "val", class_names=list(CLASSIFICATION_CLASSES))


def test_datamodule_missing_root_and_split(tmp_path):
    dm = ImageFolderDataModule(str(tmp_path / "nowhere"), image_size=32)
    with pytest.raises(DataError, match="nowhere.*does not exist.*synthetic"):
        dm.setup("fit")
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "train" / "a" / "x.png")
    dm = ImageFolderDataModule(str(tmp_path / "data"), image_size=32)
    with pytest.raises(DataError, match="val.*split folder not found"):
        dm.setup("fit")


def test_datamodule_generates_synthetic_data_and_test_falls_back_to_val(tmp_path):
    dm = ImageFolderDataModule(str(tmp_path / "gen"), image_size=32, synthetic=True, batch_size=4)
    dm.prepare_data()
    assert (tmp_path / "gen" / "train").is_dir()
    shutil.rmtree(tmp_path / "gen" / "test")
    dm.setup("test")
    assert dm.test_set.split_dir.name == "val"
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["path"]) == 4


def test_yaml_pipeline_and_its_errors():
    spec = [{"name": "RandomCrop", "height": 24, "width": 24}, {"name": "HorizontalFlip", "p": 0.5},
            {"name": "PCALighting", "alpha_std": 0.1}]
    out = build_pipeline(spec, image_size=24, train=True)(image=np.zeros((32, 32, 3), np.uint8))["image"]
    assert out.shape == (3, 24, 24)
    with pytest.raises(ValueError, match=r"train_transforms\[1\]: unknown transform 'Flipp'"):
        build_pipeline([{"name": "HorizontalFlip"}, {"name": "Flipp"}], image_size=8, train=True,
                       where="train_transforms")
    with pytest.raises(ValueError, match="unknown preset 'imagenet2'"):
        build_pipeline("imagenet2", image_size=8, train=True)
    with pytest.raises(ValueError, match=r"\[0\]: RandomCrop.*invalid"):
        build_pipeline([{"name": "RandomCrop", "heigth": 3}], image_size=8, train=True)


@pytest.mark.parametrize("preset", ["alexnet", "vgg", "resnet", "small", "none"])
def test_presets_give_the_network_input_size(preset):
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    for train in (True, False):
        out = build_pipeline(preset, image_size=64, train=train)(image=image)["image"]
        assert out.shape == (3, 64, 64)


def test_pca_lighting_shifts_along_the_principal_components():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    eigval, eigvec = rgb_pca(images)
    assert eigval[0] >= eigval[1] >= eigval[2]
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-5)
    flat = np.full((4, 4, 3), 128, np.uint8)
    t = PCALighting(alpha_std=0.1, p=1.0)
    alpha = np.array([1.0, 0.0, 0.0], np.float32)
    shifted = t.apply(flat, alpha=alpha).astype(float) - 128
    expected = 255 * np.asarray(t.eigvec) @ (alpha * t.eigval)
    np.testing.assert_allclose(shifted[0, 0], np.round(expected), atol=1.0)
    assert np.all(shifted == shifted[0, 0])  # the same shift for every pixel


def test_training_drops_a_last_batch_of_one_only_for_batch_norm_models(classification_root):
    """60 training images in batches of 59 leave a last batch of 1: batch norm cannot normalise it."""
    from types import SimpleNamespace

    from torch import nn

    from tasks import ImageFolderDataModule

    def batches(model: nn.Module, drop_last=None) -> list[int]:
        dm = ImageFolderDataModule(str(classification_root), batch_size=59, image_size=32,
                                   train_transforms="small", drop_last=drop_last)
        dm.trainer = SimpleNamespace(lightning_module=model)
        dm.setup("fit")
        return [len(b["label"]) for b in dm.train_dataloader()]

    assert batches(nn.Sequential(nn.BatchNorm2d(3))) == [59]
    assert batches(nn.Sequential(nn.Conv2d(3, 3, 1))) == [59, 1]
    assert batches(nn.Sequential(nn.BatchNorm2d(3)), drop_last=False) == [59, 1]
    assert batches(nn.Sequential(nn.Conv2d(3, 3, 1)), drop_last=True) == [59]
