"""The streaming path (LitData): ``python -m densecnn.data.convert`` output read with ``streaming: true`` gives the
folder path's batches for the same seed (same order, same augmentation draws); an interrupted conversion is
refused and a re-run repairs it; DDP evaluation and mid-epoch resume behave as on the folder path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from densecnn.data import DataError
from densecnn.data.convert import main as convert_main
from densecnn.data.streaming import META_FILE, is_remote, join, normalise_root, read_meta
from tasks.datamodules.image_folder import ImageFolderDataModule
from tests.helpers import classification_args, run_fresh


def convert(fmt: str, root: Path, out: Path, *extra: str) -> Path:
    assert convert_main([fmt, str(root), str(out), "--num-workers", "1", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def classification_stream(classification_root, tmp_path_factory) -> Path:
    return convert("image_folder", classification_root, tmp_path_factory.mktemp("stream") / "shapes")


def batches(loader) -> list[dict]:
    return list(loader)


def assert_same_batches(folder: list[dict], streamed: list[dict], keys: tuple[str, ...]) -> None:
    assert len(folder) == len(streamed) > 0
    for a, b in zip(folder, streamed):
        for key in keys:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
        # the folder path names files under its root, the streamed one relative to the converted root
        assert all(str(p).endswith(q) for p, q in zip(a["path"], b["path"]))


def image_folder_module(root, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), batch_size=8, image_size=24, train_transforms="resnet", **kwargs)


def test_image_folder_stream_gives_the_folder_batches_for_the_same_seed(classification_root, classification_stream,
                                                                          monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    folder, streamed = image_folder_module(classification_root), image_folder_module(classification_stream,
                                                                                      streaming=True)
    for module in (folder, streamed):
        module.setup("fit")
    assert streamed.class_names == folder.class_names
    for epoch in (0, 1):  # the shuffle and the random crops/flips change with the epoch, identically
        loaders = folder.train_dataloader(), streamed.train_dataloader()
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert_same_batches(batches(loaders[0]), batches(loaders[1]), ("image", "label"))
    assert_same_batches(batches(folder.val_dataloader()), batches(streamed.val_dataloader()), ("image", "label"))


def test_streamed_items_are_the_source_files_decoded(classification_root, classification_stream):
    """The oracle is PIL on the original file: records keep the encoded bytes, not transformed tensors."""
    from PIL import Image

    module = ImageFolderDataModule(str(classification_stream), train_transforms="none", streaming=True)
    module.setup("test")
    module.test_set.transform = None  # the raw decoded pixels, /255
    item = module.test_set[5]
    with Image.open(classification_root / item["path"]) as image:
        expected = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
    assert torch.allclose(item["image"].permute(1, 2, 0).reshape(-1, 3) * 255, expected, atol=1e-3)
    assert module.class_names[item["label"]] == Path(item["path"]).parent.name


def test_roots_local_file_url_and_remote_forms(classification_stream, tmp_path):
    assert normalise_root(f"file://{classification_stream}") == str(classification_stream)
    assert read_meta(f"file://{classification_stream}") == read_meta(classification_stream)
    assert is_remote("s3://bucket/shapes") and is_remote("gs://bucket/shapes") and not is_remote(tmp_path)
    assert join("s3://bucket/shapes/", "train") == "s3://bucket/shapes/train"  # Path() would fold the "//"
    module = ImageFolderDataModule("s3://bucket/shapes", streaming=True)
    assert module.stream_root == "s3://bucket/shapes"
    with pytest.raises(DataError, match=META_FILE):
        ImageFolderDataModule(str(tmp_path), streaming=True).setup("fit")


def test_an_interrupted_conversion_is_refused_then_a_rerun_restarts_it(classification_root, classification_stream,
                                                                       tmp_path):
    out = tmp_path / "shapes"
    shutil.copytree(classification_stream, out)
    # as if killed while writing "val": its partial folder holds junk and no metadata was written yet
    (out / META_FILE).unlink()
    shutil.rmtree(out / "val")
    (out / "val.partial").mkdir()
    (out / "val.partial" / "chunk-0-0.bin").write_bytes(b"half a chunk")
    with pytest.raises(DataError, match="interrupted"):
        ImageFolderDataModule(str(out), streaming=True).setup("fit")
    kept = (out / "train" / "index.json").stat().st_mtime_ns
    convert("image_folder", classification_root, out)
    assert (out / "train" / "index.json").stat().st_mtime_ns == kept  # the finished split was kept
    assert not (out / "val.partial").exists()
    assert read_meta(out) == read_meta(classification_stream)
    module = ImageFolderDataModule(str(out), streaming=True, train_transforms="none")
    module.setup("validate")
    reference = ImageFolderDataModule(str(classification_root), train_transforms="none")
    reference.setup("validate")
    assert len(module.val_set) == len(reference.val_set)
    assert all(torch.equal(module.val_set[i]["image"], reference.val_set[i]["image"])
               for i in range(len(reference.val_set)))


def test_a_converted_dataset_of_another_format_is_refused(classification_stream, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(classification_stream, out)
    meta = json.loads((out / META_FILE).read_text())
    (out / META_FILE).write_text(json.dumps({**meta, "format": "coco"}))
    with pytest.raises(DataError, match="image_folder"):
        ImageFolderDataModule(str(out), streaming=True).setup("fit")


def test_dense_stream_gives_the_folder_batches_for_the_same_seed(tmp_path, monkeypatch):
    from densecnn.data.synthetic.dense import write_dense_dataset
    from tasks.datamodules.dense import DenseDataModule

    root = write_dense_dataset(tmp_path / "rooms", height=24, width=32, splits={"train": 6, "val": 3})
    stream = convert("dense", root, tmp_path / "rooms-stream")
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    modules = [DenseDataModule(str(data), batch_size=4, image_size=(24, 32), crop_size=(16, 24), rotation=10.0,
                               brightness=0.2, streaming=data == stream) for data in (root, stream)]
    for module in modules:
        module.setup("fit")
    assert modules[1].maps == modules[0].maps == ["depth", "normals", "semantic"]
    assert modules[1].class_names == modules[0].class_names
    keys = ("image", "depth", "normals", "semantic", "name")
    for epoch in (0, 1):
        loaders = [module.train_dataloader() for module in modules]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert_same_batches(batches(loaders[0]), batches(loaders[1]), keys)
    assert_same_batches(*(batches(module.val_dataloader()) for module in modules), (*keys, "depth_window"))
    with pytest.raises(DataError, match="semantic"):  # a map the conversion did not store
        convert("dense", root, tmp_path / "depth-only", "--maps", "depth")
        DenseDataModule(str(tmp_path / "depth-only"), maps=["depth", "semantic"], streaming=True).setup("fit")


def assert_equal_nested(a, b, where: str = "batch") -> None:
    """Tensors bit-equal, everything else ==, through dicts and lists (detection targets are per-image lists)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_detection_batches(modules) -> None:
    for module in modules:
        module.setup("fit")
    assert modules[1].class_names == modules[0].class_names and modules[1].category_ids == modules[0].category_ids
    for epoch in (0, 1):
        loaders = [module.train_dataloader() for module in modules]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for folder, streamed in zip(*(batches(loader) for loader in loaders), strict=True):
            paths = folder.pop("path"), streamed.pop("path")
            assert all(p.endswith(q) for p, q in zip(*paths))
            assert_equal_nested(folder, streamed)
    for folder, streamed in zip(*(batches(module.val_dataloader()) for module in modules), strict=True):
        folder.pop("path"), streamed.pop("path")
        assert_equal_nested(folder, streamed)


def test_coco_stream_gives_the_folder_batches_for_the_same_seed(tmp_path, monkeypatch):
    from densecnn.data.synthetic.detection import write_detection_dataset
    from tasks.datamodules.detection import CocoDetectionDataModule

    root = tmp_path / "coco"
    write_detection_dataset(root, image_size=48, splits={"train": 6, "val": 3})
    stream = convert("coco", root, tmp_path / "coco-stream")
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    assert_same_detection_batches([CocoDetectionDataModule(str(data), batch_size=4, image_size=64,
                                                           streaming=data == stream) for data in (root, stream)])


def test_voc_stream_keeps_difficult_objects_for_evaluation_only(tmp_path, monkeypatch):
    from tasks.datamodules.detection import VOCDetectionDataModule
    from tests.detection.helpers import write_voc

    objects = {"000001": [("dog", 0, (1, 1, 10, 20)), ("cat", 1, (5, 6, 30, 40))],
               "000002": [("car", 0, (3, 4, 60, 44))], "000003": []}
    root = write_voc(tmp_path / "VOC2007", objects)
    write_voc(root, {"000004": [("dog", 1, (2, 2, 20, 30)), ("bus", 0, (10, 10, 50, 40))]}, split="test")
    stream = convert("voc", root, tmp_path / "voc-stream")
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    modules = [VOCDetectionDataModule(str(data), batch_size=2, image_size=64, streaming=data == stream)
               for data in (root, stream)]
    assert_same_detection_batches(modules)
    # the hand oracle: 000004's difficult dog is kept for evaluation (flagged) and has the VOC label of "dog"
    target = modules[1].val_set[0]["target"]
    assert target["difficult"].tolist() == [1, 0] and target["labels"].tolist() == [12, 6]
    with pytest.raises(DataError, match="proposals"):
        VOCDetectionDataModule(str(stream), streaming=True, proposals="selective_search").prepare_data()


def test_video_stream_with_ucf101_lists_gives_the_folder_clips_for_the_same_seed(tmp_path, monkeypatch):
    from densecnn.data.synthetic.video import write_video_dataset
    from tasks.datamodules.video import VideoFolderDataModule

    root = write_video_dataset(tmp_path / "ucf", videos_per_class={"train": 1, "test": 1}, num_frames=12,
                               frame_size=(24, 32))
    stream = convert("video", root, tmp_path / "ucf-stream")
    meta = read_meta(stream)
    # UCF101 has no validation list: val is the test list, stored once
    assert meta["splits"]["test"]["stored_as"] == "val" and not (stream / "test").exists()
    assert meta["splits"]["test"]["num_samples"] == meta["splits"]["val"]["num_samples"] > 0
    monkeypatch.setenv("PL_GLOBAL_SEED", "6")
    # the streamed side reads in 2 worker processes: each opens its own LitData reader and scratch folder
    modules = [VideoFolderDataModule(str(data), clip_len=4, frame_stride=2, clips_per_video=2, batch_size=2,
                                     resize=(24, 32), crop_size=16, streaming=data == stream,
                                     num_workers=2 if data == stream else 0) for data in (root, stream)]
    for module in modules:
        module.setup(None)
    assert modules[1].class_names == modules[0].class_names
    keys = ("video", "label", "index", "starts", "num_frames")
    for epoch in (0, 1):  # random clip starts and crops/flips drawn from the same seeds
        loaders = [module.train_dataloader() for module in modules]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        assert_same_batches(batches(loaders[0]), batches(loaders[1]), keys)
    assert_same_batches(batches(modules[0].test_dataloader()), batches(modules[1].test_dataloader()), keys)


# ------------------------------------------------------------------------------------------------ slow: processes
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.mark.slow
def test_ddp_evaluation_of_a_streamed_dataset_sees_every_sample_once(classification_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(classification_root, root)
    next((root / "val" / "disk").iterdir()).unlink()  # 23 validation images for 2 processes
    stream = convert("image_folder", root, tmp_path / "stream")
    fit = run_fresh(["-m", "densecnn", "fit", *classification_args(root, tmp_path / "fit")])
    assert fit.returncode == 0, fit.stderr[-4000:]
    best = next((tmp_path / "fit").rglob("best-*.ckpt"))
    metrics = {}
    for name, data, extra in (("folder", root, ["--trainer.devices", "1"]),
                              ("stream-ddp", stream, [*DDP, "--data.init_args.streaming", "true"])):
        run = run_fresh(["-m", "densecnn", "validate", *classification_args(data, tmp_path / name),
                         "--ckpt_path", str(best), *extra])
        assert run.returncode == 0, run.stderr[-4000:]
        metrics[name] = json.loads(next((tmp_path / name).rglob("metrics.json")).read_text())
    assert 0.0 < metrics["folder"]["val/acc1"] < 1.0  # a duplicated or missing sample would move it
    assert metrics["stream-ddp"]["val/acc1"] == pytest.approx(metrics["folder"]["val/acc1"], abs=1e-6)
    assert metrics["stream-ddp"]["val/loss"] == pytest.approx(metrics["folder"]["val/loss"], rel=1e-4)


@pytest.mark.slow
def test_streamed_run_killed_mid_epoch_then_resumed_gives_the_folder_runs_weights(classification_root, tmp_path):
    from tests.helpers import fit_killed_mid_run
    from tests.tasks.test_reproducible_runs import SLOW, assert_identical, classification_run, fit, final_weights

    stream = convert("image_folder", classification_root, tmp_path / "stream")
    fit(classification_run(classification_root, tmp_path / "folder", 0))
    args = classification_run(stream, tmp_path / "stream-run", 2, "--data.init_args.streaming", "true",
                              "--trainer.callbacks", SLOW)
    at_kill = torch.load(fit_killed_mid_run(args, tmp_path / "stream-run", after_step=2), weights_only=True)
    loader_state = at_kill["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert at_kill["epoch"] == 0 and 2 <= loader_state["batches"] < 4, loader_state
    fit([*args, "--ckpt_path", "last"])
    assert_identical(final_weights(tmp_path / "stream-run"), final_weights(tmp_path / "folder"))
