"""NYU Depth v2 through the streaming path: ``python -m densecnn.data.convert nyu`` output read with
``streaming: true`` gives the ``.mat`` path's batches for the same seed (two augmented epochs, and evaluation with
the standard protocol's full-resolution ground truth and window), and a ``test`` through the Trainer scores the
same metrics."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from scipy.io import savemat

from densecnn.data import DataError
from densecnn.data.nyu import NYU40_CLASSES
from tasks.datamodules.dense import DenseDataModule, NYUDepthV2DataModule
from tests.data.test_streaming import assert_equal_nested, convert

H, W, FRAMES = 48, 64, 7  # frames in the file; the split below uses 4 for training and 3 for test
TRAIN, TEST = [1, 3, 4, 6], [2, 5, 7]  # 1-based, as splits.mat stores them
SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """A labeled file in the official layout (MATLAB column-major: every array transposed), the split and
    Gupta's 894 -> 40 table, as tests/dense/test_nyu.py writes them, and its conversion."""
    root = tmp_path_factory.mktemp("nyu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(FRAMES, H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    depths = (1.0 + 0.1 * xx + 0.05 * yy + rng.uniform(0, 0.2, size=(FRAMES, H, W))).astype(np.float32)  # planar
    depths[:, 5:9, 10:20] = 0.0  # missing
    labels = rng.integers(0, 895, size=(FRAMES, H, W)).astype(np.uint16)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
    savemat(root / "splits.mat", {"trainNdxs": np.array(TRAIN)[:, None], "testNdxs": np.array(TEST)[:, None]})
    mapping = rng.integers(0, 41, size=894)
    savemat(root / "classMapping40.mat", {"mapClass": mapping[None, :]})
    stream = convert("nyu", root, tmp_path_factory.mktemp("stream") / "nyu", "--mapping-file", "classMapping40.mat")
    return root, stream, images, depths, labels, mapping


def module(data, streaming: bool = False, **kwargs) -> NYUDepthV2DataModule:
    options = dict(batch_size=3, mapping_file="classMapping40.mat", image_size=(24, 32), crop_size=(20, 28),
                   rotation=8.0, brightness=0.2, contrast=0.1)
    return NYUDepthV2DataModule(str(data), streaming=streaming, **{**options, **kwargs})


def assert_same(folder: list[dict], streamed: list[dict]) -> None:
    assert len(folder) == len(streamed) > 0
    for a, b in zip(folder, streamed):
        a, b = dict(a), dict(b)
        # the .mat path names <root>/nyu_depth_v2_labeled.mat#<frame>, the streamed one the same without <root>
        assert all(p.endswith("/" + q) for p, q in zip(a.pop("path"), b.pop("path")))
        assert_equal_nested(a, b)


def test_records_are_the_labeled_files_frames_in_the_converted_class_set(nyu):
    """The oracle is the file itself read by hand: frame f of the split, transposed back, labels through
    Gupta's table (0 and unmapped ids -> 255)."""
    from densecnn.data.streaming import read_meta

    _, stream, images, depths, labels, mapping = nyu
    meta = read_meta(stream)
    assert meta["format"] == "nyu" and meta["classes"] == "40" and meta["depth_key"] == "depths"
    assert meta["class_names"] == list(NYU40_CLASSES) and meta["maps"] == ["depth", "normals", "semantic"]
    assert {s: v["num_samples"] for s, v in meta["splits"].items()} == {"train": len(TRAIN), "test": len(TEST)}
    dm = module(stream, streaming=True)
    dm.setup("test")
    sample = dm.test_set.load(1)  # the second test frame: 5 (1-based)
    np.testing.assert_array_equal(sample.rgb, images[4])
    np.testing.assert_array_equal(sample.depth, depths[4])
    ids40 = np.concatenate([[0], mapping])[labels[4]]
    np.testing.assert_array_equal(sample.semantic, np.where(ids40 > 0, ids40 - 1, 255))
    assert sample.normals.shape == (H, W, 3) and sample.normals.dtype == np.float32
    assert dm.test_set.sample_id(1) == ("nyu_0005", "nyu_depth_v2_labeled.mat#5")
    assert dm.class_names == list(NYU40_CLASSES)


def test_nyu_stream_gives_the_mat_batches_for_the_same_seed(nyu, monkeypatch):
    root, stream = nyu[:2]
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    modules = [module(root), module(stream, streaming=True)]
    for dm in modules:
        dm.setup(None)
    assert modules[1].class_names == modules[0].class_names == list(NYU40_CLASSES)
    for epoch in (0, 1):  # the shuffle and every zoom/rotation/crop/flip/colour draw, identically
        loaders = [dm.train_dataloader() for dm in modules]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert_same(*(list(loader) for loader in loaders))
    evaluated = [list(dm.test_dataloader()) for dm in modules]
    assert_same(*evaluated)
    # the standard protocol's inputs: the 48x64 frame's ground truth, and the window the 24x32 input covers
    assert evaluated[1][0]["depth_full"].shape == (3, H, W)
    torch.testing.assert_close(evaluated[1][0]["depth_window"], torch.tensor([[0.0, H, 0.0, W]] * 3))
    # eval_crop (the centre 20x28 of 24x32) and the resized protocol: the same on both paths too
    for kwargs in ({"eval_crop": True}, {"eval_protocol": "resized"}):
        modules = [module(root, **kwargs), module(stream, streaming=True, **kwargs)]
        for dm in modules:
            dm.setup("test")
        assert_same(*(list(dm.test_dataloader()) for dm in modules))
    assert "depth_full" not in next(iter(modules[1].test_dataloader()))


def test_a_test_run_through_the_trainer_scores_what_the_mat_path_scores(nyu, tmp_path):
    import pytorch_lightning as pl

    from tasks import DensePredictionTask

    root, stream = nyu[:2]
    torch.manual_seed(0)
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["depth", "normals", "semantic"], num_classes=40,
                               **SMALL_HEAD)
    metrics = []
    for name, dm in (("mat", module(root)), ("stream", module(stream, streaming=True))):
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False,
                             default_root_dir=str(tmp_path / name))  # metrics.json and pictures go there
        metrics.append(trainer.test(task, datamodule=dm, verbose=False)[0])
    assert {"test/depth/rmse", "test/normals/mean", "test/semantic/miou"} <= metrics[0].keys()
    assert metrics[0]["test/depth/rmse"] > 0 and metrics[0]["test/normals/mean"] > 0
    assert metrics[1] == metrics[0]  # bit-equal inputs, one model: the same numbers, not merely close


def test_a_conversion_of_other_classes_maps_or_format_is_refused(nyu, tmp_path):
    root, stream = nyu[:2]
    with pytest.raises(DataError, match=r"data.init_args.classes: '13', but .* was converted with '40'"):
        module(stream, streaming=True, classes="13").setup("test")
    with pytest.raises(DataError, match="data.init_args.depth_key"):
        module(stream, streaming=True, depth_key="rawDepths").setup("test")
    depth_only = convert("nyu", root, tmp_path / "depth-only", "--classes", "894", "--maps", "depth")
    with pytest.raises(DataError, match=r"data.init_args.maps: \['semantic'\] not in the converted"):
        module(depth_only, streaming=True, classes="894", maps=["depth", "semantic"]).setup("test")
    with pytest.raises(DataError, match="holds a converted 'nyu' dataset; this DataModule reads dense"):
        DenseDataModule(str(stream), streaming=True).setup("fit")
    with pytest.raises(DataError, match="'train' and 'test' splits, not 'val'"):
        convert("nyu", root, tmp_path / "bad", "--split", "val")


# ------------------------------------------------------------------------------------------------ KITTI
@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    """tests/dense/test_kitti.py's raw + depth-benchmark fixture (two drives of different frame sizes), with a
    monodepth2 training list and a BTS test list, converted with each ground-truth source."""
    from tests.dense.test_kitti import write_kitti

    root = write_kitti(tmp_path_factory.mktemp("kitti") / "kitti")
    (root / "train_files.txt").write_text("".join(f"2011_09_26/2011_09_26_drive_0001_sync {i} l\n"
                                                  for i in range(4)))
    (root / "test_files.txt").write_text(
        "2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000003.png "
        "2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/0000000003.png 721.5377\n"
        "2011_09_28/2011_09_28_drive_0002_sync/image_02/data/0000000000.png "
        "2011_09_28_drive_0002_sync/proj_depth/groundtruth/image_02/0000000000.png 707.0493\n")
    out = tmp_path_factory.mktemp("stream")
    lists = ("--train-list", "train_files.txt", "--test-list", "test_files.txt")
    return root, convert("kitti", root, out / "annotated", *lists), convert(
        "kitti", root, out / "velodyne", *lists, "--ground-truth", "velodyne")


def kitti_module(data, streaming: bool = False, **kwargs):
    from tasks.datamodules.dense import KittiDepthDataModule

    options = dict(batch_size=2, train_list="train_files.txt", test_list="test_files.txt", kb_crop=(8, 38),
                   image_size=(32, 64), crop_size=(32, 48), rotation=3.0, brightness=0.2)
    return KittiDepthDataModule(str(data), streaming=streaming, **{**options, **kwargs})


def test_kitti_records_hold_the_ground_truth_exactly(kitti):
    """Oracle: the fixture's annotated maps code each pixel as (1000 + 64 row + col) / 256 m, row 0 invalid."""
    from densecnn.data.streaming import decode_sparse, encode_sparse, read_meta
    from tests.dense.test_kitti import _code

    _, annotated, velodyne = kitti
    assert read_meta(annotated)["ground_truth"] == "annotated" and read_meta(velodyne)["ground_truth"] == "velodyne"
    dm = kitti_module(annotated, streaming=True)
    dm.setup("test")
    depth = dm.test_set.load(1).depth  # the 11x38 frame of the second drive
    rows, cols = np.mgrid[0:11, 0:38]
    np.testing.assert_array_equal(depth, np.where(rows == 0, 0, _code(rows, cols) / 256).astype(np.float32))
    assert dm.test_set.sample_id(1) == ("2011_09_28_drive_0002_sync_0000000000_2",
                                        "2011_09_28/2011_09_28_drive_0002_sync/image_02/data/0000000000.png")
    sparse = np.zeros((5, 7), np.float32)
    sparse[1, 2], sparse[4, 6] = 3.25, 1e-7
    assert np.array_equal(decode_sparse(encode_sparse(sparse)), sparse) and decode_sparse(
        encode_sparse(sparse)).dtype == np.float32


@pytest.mark.parametrize("ground_truth", ["annotated", "velodyne"])
def test_kitti_stream_gives_the_raw_batches_for_the_same_seed(kitti, ground_truth, monkeypatch):
    root, annotated, velodyne = kitti
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    stream = annotated if ground_truth == "annotated" else velodyne
    modules = [kitti_module(root, ground_truth=ground_truth),
               kitti_module(stream, streaming=True, ground_truth=ground_truth)]
    for dm in modules:
        dm.setup(None)
    for epoch in (0, 1):
        loaders = [dm.train_dataloader() for dm in modules]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert_same(*(list(loader) for loader in loaders))
    for name in ("val_dataloader", "test_dataloader"):  # val: the test list on both paths
        evaluated = [list(getattr(dm, name)()) for dm in modules]
        assert_same(*evaluated)
    assert evaluated[1][0]["depth_full_size"].tolist() == [[12, 40], [11, 38]]


def test_kitti_stream_of_the_other_ground_truth_is_refused(kitti):
    with pytest.raises(DataError, match="data.init_args.ground_truth: 'velodyne', but .* 'annotated'"):
        kitti_module(kitti[1], streaming=True, ground_truth="velodyne").setup("test")
    with pytest.raises(DataError, match="no --val-list given"):
        convert("kitti", kitti[0], kitti[0] / "bad", "--test-list", "test_files.txt", "--split", "val")
