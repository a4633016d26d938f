"""The NYU Depth v2 labeled-file reader on a tiny file in the official layout (HDF5 / MATLAB v7.3)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.io import savemat

from densecnn.data import DataError
from densecnn.data.nyu import NYU13_CLASSES, NYU40_CLASSES, NYU40_TO_13, NYUDepthV2Dataset, read_splits

H, W, N = 12, 16, 5


@pytest.fixture()
def nyu(tmp_path):
    """Frames stored as MATLAB writes them: every array transposed, images (N, 3, W, H)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, size=(N, H, W)).astype(np.float32)
    raw = depths.copy()
    raw[:, :2] = 0
    labels = rng.integers(0, 895, size=(N, H, W)).astype(np.uint16)
    labels[:, 0, 0] = 0  # unlabelled
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["rawDepths"] = raw.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2], [5]])})
    mapping = rng.integers(1, 41, size=894)
    mapping[10] = 0  # an 894-class id that Gupta's table leaves unmapped
    savemat(tmp_path / "classMapping40.mat", {"mapClass": mapping[None, :]})
    return tmp_path, images, depths, raw, labels, mapping


def test_reads_frames_in_image_orientation_with_the_official_split(nyu):
    root, images, depths, raw, labels, mapping = nyu
    assert read_splits(root / "splits.mat")["test"].tolist() == [1, 4]
    ds = NYUDepthV2Dataset(root / "nyu_depth_v2_labeled.mat", "train", splits_file=root / "splits.mat",
                           classes="40", mapping_file=root / "classMapping40.mat", maps=["depth", "semantic"])
    assert len(ds) == 3 and ds.class_names == NYU40_CLASSES
    sample = ds.load(1)  # frame 3 (1-based)
    np.testing.assert_array_equal(sample.rgb, images[2])
    np.testing.assert_array_equal(sample.depth, depths[2])
    expected = np.where(np.concatenate([[0], mapping])[labels[2]] > 0, np.concatenate([[0], mapping])[labels[2]] - 1, 255)
    np.testing.assert_array_equal(sample.semantic, expected)
    assert sample.semantic[0, 0] == 255
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["name"] == "nyu_0001"


def test_thirteen_classes_go_through_the_forty_class_table(nyu):
    root, _, _, _, labels, mapping = nyu
    assert len(NYU40_TO_13) == 41 and set(NYU40_TO_13[1:]) == set(range(1, 14))
    assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index("wall") + 1] - 1] == "wall"
    assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index("television") + 1] - 1] == "tv"
    assert NYU13_CLASSES[NYU40_TO_13[NYU40_CLASSES.index("blinds") + 1] - 1] == "window"
    ds = NYUDepthV2Dataset(root / "nyu_depth_v2_labeled.mat", "test", splits_file=root / "splits.mat", classes="13",
                           mapping_file=root / "classMapping40.mat", maps=["semantic"])
    sample = ds.load(0)  # frame 2
    full = np.concatenate([[0], mapping])
    ids13 = NYU40_TO_13[full[labels[1]]]
    np.testing.assert_array_equal(sample.semantic, np.where(ids13 > 0, ids13 - 1, 255))
    assert sample.semantic.max() < 13 or sample.semantic.max() == 255


def test_raw_depth_and_normals_from_depth(nyu):
    root, _, _, raw, _, _ = nyu
    ds = NYUDepthV2Dataset(root / "nyu_depth_v2_labeled.mat", "all", classes="894", maps=["depth", "normals"],
                           depth_key="rawDepths")
    sample = ds.load(4)
    np.testing.assert_array_equal(sample.depth, raw[4])
    assert sample.normals.shape == (H, W, 3) and (sample.normals[:2] == 0).all()


def test_missing_split_or_mapping_files_and_bad_files_are_named(nyu, tmp_path):
    root = nyu[0]
    mat = root / "nyu_depth_v2_labeled.mat"
    with pytest.raises(DataError, match="needs the 894 -> 40 mapping file"):
        NYUDepthV2Dataset(mat, "all", classes="40")
    with pytest.raises(DataError, match="needs splits_file"):
        NYUDepthV2Dataset(mat, "train", classes="894")
    with pytest.raises(DataError, match="missing.mat: split file not found"):
        NYUDepthV2Dataset(mat, "train", classes="894", splits_file=root / "missing.mat")
    savemat(root / "short.mat", {"mapClass": np.ones((1, 10))})
    with pytest.raises(DataError, match="short.mat: expected 894 class ids"):
        NYUDepthV2Dataset(mat, "all", classes="40", mapping_file=root / "short.mat")
    (tmp_path / "broken.mat").write_bytes(b"nope")
    with pytest.raises(DataError, match="broken.mat: not an HDF5"):
        NYUDepthV2Dataset(tmp_path / "broken.mat", "all", classes="894")
    savemat(root / "bad_split.mat", {"trainNdxs": np.array([[99]]), "testNdxs": np.array([[1]])})
    with pytest.raises(DataError, match="outside the 5 frames"):
        NYUDepthV2Dataset(mat, "train", classes="894", splits_file=root / "bad_split.mat")


def test_nyu_datamodule_batches_with_augmentation_and_class_names(nyu):
    from tasks.datamodules.dense import NYUDepthV2DataModule

    root = nyu[0]
    dm = NYUDepthV2DataModule(str(root), batch_size=2, mapping_file="classMapping40.mat", classes="13",
                              image_size=(12, 16), crop_size=(10, 14))
    dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2 and dm.class_names == list(NYU13_CLASSES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 10, 14) and batch["depth"].shape == (2, 10, 14)
    assert batch["normals"].shape == (2, 3, 10, 14) and batch["semantic"].shape == (2, 10, 14)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 12, 16) and val["name"] == ["nyu_0002", "nyu_0005"]


def test_download_fetches_only_missing_official_files(nyu, tmp_path, monkeypatch):
    """``download: true`` fetches the missing official files from where they are published, renaming each
    into place only when complete; files already there are kept, and a failed download names file and URL."""
    import shutil
    import urllib.error

    import torch.hub

    from densecnn.data.nyu import NYU_URLS
    from tasks.datamodules.dense import NYUDepthV2DataModule

    source = nyu[0]
    root = tmp_path / "fresh"
    root.mkdir()
    shutil.copy(source / "splits.mat", root / "splits.mat")  # already there: must not be fetched again
    requested = []

    def fake_download(url, dst, progress=True):
        requested.append(url)
        shutil.copy(source / Path(url).name, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    dm = NYUDepthV2DataModule(str(root), batch_size=2, mapping_file="classMapping40.mat", classes="13",
                              image_size=(12, 16), crop_size=(10, 14), download=True)
    dm.prepare_data()
    assert requested == [NYU_URLS["nyu_depth_v2_labeled.mat"], NYU_URLS["classMapping40.mat"]]
    dm.setup("fit")
    assert len(dm.train_set) == 3 and dm.class_names == list(NYU13_CLASSES)
    dm.prepare_data()  # everything present now: nothing fetched
    assert len(requested) == 2

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    (root / "classMapping40.mat").unlink()
    with pytest.raises(DataError, match=r"classMapping40.mat: could not download https://github.com/.*no route to host"):
        dm.prepare_data()
    assert (root / "nyu_depth_v2_labeled.mat").is_file() and not (root / "classMapping40.mat").exists()
    other = NYUDepthV2DataModule(str(root), splits_file="my_split.mat", download=True)
    with pytest.raises(DataError, match="my_split.mat: not found, and it is not one of the files that can be"):
        other.prepare_data()
