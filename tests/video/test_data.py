"""Video data: synthetic MP4s, PyAV decoding, clip sampling, augmentation, caching, splits, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from densecnn.data import DataError
from densecnn.data.synthetic.video import VIDEO_CLASSES, motion_parameters, write_mp4, write_video_dataset
from densecnn.data.video import (FrameStore, VideoClipDataset, clip_indices, decode_video, uniform_starts,
                                 video_splits)
from tasks.datamodules.video import VideoFolderDataModule, video_pipeline


def test_synthetic_videos_are_real_deterministic_mp4s(tmp_path, video_root):
    again = write_video_dataset(tmp_path / "again", videos_per_class={"train": 4, "test": 2}, num_frames=12,
                                frame_size=(32, 44))
    files = sorted(p.relative_to(video_root) for p in video_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((video_root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert sorted(p.name for p in video_root.iterdir() if p.is_dir()) == sorted(VIDEO_CLASSES)
    frames = decode_video(video_root / "grow" / "grow_0000.mp4", resize=None)
    assert frames.shape == (12, 32, 44, 3) and frames.dtype == np.uint8
    assert (video_root / "classInd.txt").read_text().splitlines()[0] == "1 move_left"


def test_no_single_frame_tells_the_motion_class():
    """Per frame, position, angle and size follow the same distribution in every class: a frame's
    statistics (here their means over many videos) do not depend on the class."""
    stats = {}
    for name in VIDEO_CLASSES:
        rng = np.random.default_rng(0)
        params = [motion_parameters(rng, name, 16, 60, 80) for _ in range(800)]
        stats[name] = np.array([[p["x"].mean() / 80, p["y"].mean() / 60, np.log(p["radius"]).mean()]
                                for p in params]).mean(axis=0)
    values = np.stack(list(stats.values()))
    assert np.ptp(values, axis=0).max() < 0.04
    left = motion_parameters(np.random.default_rng(1), "move_left", 4, 60, 80)["x"]
    assert ((np.diff(left) + 80) % 80 > 40).all()  # moving left on the torus


def test_decode_resizes_and_the_cache_returns_the_same_frames(tmp_path, video_root):
    path = video_root / "move_right" / "move_right_0000.mp4"
    frames = decode_video(path, resize=(24, 30))
    assert frames.shape == (12, 24, 30, 3)
    store = FrameStore((24, 30), cache_dir=tmp_path / "cache")
    first = store.load(path)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    second = store.load(path)
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(first, frames)
    np.testing.assert_array_equal(second, frames)
    assert FrameStore((12, 16), cache_dir=tmp_path / "cache").cache_path(path) != cached[0]


def test_clip_indices_loop_or_pad_short_videos():
    np.testing.assert_array_equal(clip_indices(10, 2, 4, 2), [2, 4, 6, 8])
    np.testing.assert_array_equal(clip_indices(5, 0, 8, 1, "loop"), [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(clip_indices(5, 0, 8, 1, "pad"), [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(uniform_starts(40, 16, 3), [0, 12, 24])
    np.testing.assert_array_equal(uniform_starts(10, 16, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="short_video_policy"):
        clip_indices(5, 0, 8, 1, "stretch")


def _clip_dataset(root: Path, **kwargs) -> VideoClipDataset:
    _, splits = video_splits(root)
    transform = video_pipeline("c3d", crop_size=20, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, where="t")
    return VideoClipDataset(splits["train"], clip_len=8, frame_stride=1, transform=transform,
                            frames=FrameStore((24, 32)), **kwargs)


def test_random_clips_are_seeded_and_uniform_clips_fixed(video_root):
    torch.manual_seed(0)
    a = _clip_dataset(video_root)[3]
    torch.manual_seed(0)
    b = _clip_dataset(video_root)[3]
    torch.manual_seed(1)
    draws = [_clip_dataset(video_root)[3] for _ in range(4)]
    assert a["video"].shape == (3, 8, 20, 20)
    torch.testing.assert_close(a["video"], b["video"])
    assert any(not torch.equal(d["video"], a["video"]) for d in draws)
    seeded = _clip_dataset(video_root, seed=5)
    torch.testing.assert_close(seeded[2]["video"], _clip_dataset(video_root, seed=5)[2]["video"])
    uniform = _clip_dataset(video_root, sampling="uniform", clips_per_video=3)
    item = uniform[0]
    assert item["video"].shape == (3, 3, 8, 20, 20) and item["starts"].tolist() == [0, 2, 4]


def test_the_same_augmentation_is_applied_to_every_frame(tmp_path):
    """A video whose frames are all the same image stays constant over time after random crop and flip."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 44, 3), dtype=np.uint8)
    path = tmp_path / "static" / "static.mp4"
    path.parent.mkdir()
    write_mp4(path, np.repeat(image[None], 10, axis=0))
    transform = video_pipeline("c3d", crop_size=20, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, where="t")
    dataset = VideoClipDataset([(str(path), 0)], clip_len=8, transform=transform, frames=FrameStore((32, 44)))
    decoded = decode_video(path, (32, 44)).astype(np.float32)
    codec_noise = np.abs(decoded - decoded[:1]).max() / 255 / 0.25
    for seed in range(6):
        torch.manual_seed(seed)
        clip = dataset[0]["video"]
        assert (clip - clip[:, :1]).abs().max() <= codec_noise + 1e-6


def test_deterministic_split_without_lists(tmp_path, video_root):
    root = tmp_path / "plain"
    for name in ("grow", "shrink"):
        shutil.copytree(video_root / name, root / name)
    classes, splits = video_splits(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert classes == ["grow", "shrink"]
    again = video_splits(root, val_fraction=0.2, test_fraction=0.2, seed=0)[1]
    assert splits == again
    paths = [{p for p, _ in splits[k]} for k in ("train", "val", "test")]
    assert sum(map(len, paths)) == 12 and not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert len(paths[1]) == len(paths[2]) == 2  # round(0.2 * 6) per class


def test_ucf101_lists_are_read(video_root):
    classes, splits = video_splits(video_root)
    assert classes == list(VIDEO_CLASSES)
    assert len(splits["train"]) == 24 and len(splits["test"]) == 12 and splits["val"] == splits["test"]
    assert all(Path(p).parent.name == classes[label] for p, label in splits["train"])


def _copy(video_root: Path, dst: Path) -> Path:
    shutil.copytree(video_root, dst)
    return dst


def test_bad_split_lists_are_named(tmp_path, video_root):
    root = _copy(video_root, tmp_path / "lists")
    lines = (root / "trainlist01.txt").read_text().splitlines()
    (root / "trainlist01.txt").write_text("\n".join(lines + ["grow/missing.avi 5"]) + "\n")
    with pytest.raises(DataError, match=r"trainlist01.txt:25: listed video .*missing.avi does not exist"):
        video_splits(root)
    (root / "trainlist01.txt").write_text("grow/grow_0000.mp4 1\n")
    with pytest.raises(DataError, match=r"trainlist01.txt:1: label 1 .* contradicts"):
        video_splits(root)
    (root / "testlist01.txt").unlink()
    with pytest.raises(DataError, match="testlist01.txt: split list not found"):
        video_splits(root)


def test_empty_class_folder_is_an_error(tmp_path, video_root):
    root = tmp_path / "empty"
    shutil.copytree(video_root / "grow", root / "grow")
    (root / "shrink").mkdir()
    with pytest.raises(DataError, match=r"shrink: class folder holds no videos"):
        video_splits(root)


def test_corrupt_and_truncated_videos_are_named_or_skipped(tmp_path, video_root):
    root = tmp_path / "bad"
    shutil.copytree(video_root / "grow", root / "grow")
    good = root / "grow" / "grow_0000.mp4"
    garbage = root / "grow" / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    truncated = root / "grow" / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(DataError, match=path.name):
            decode_video(path)
    samples = [(str(p), 0) for p in (good, garbage, truncated)]
    with pytest.raises(DataError, match="garbage.mp4"):
        VideoClipDataset(samples, clip_len=4)[1]
    with pytest.warns(UserWarning, match="skipping 2 unreadable video"):
        dataset = VideoClipDataset(samples, clip_len=4, skip_corrupt=True)
    assert [p for p, _ in dataset.samples] == [str(good)]


def test_datamodule_batches(video_root):
    dm = VideoFolderDataModule(str(video_root), clip_len=8, clips_per_video=2, batch_size=3, resize=(32, 44),
                               crop_size=28, train_transforms="c3d_noflip")
    dm.setup("fit")
    assert dm.class_names == list(VIDEO_CLASSES)
    train = next(iter(dm.train_dataloader()))
    assert train["video"].shape == (3, 3, 8, 28, 28) and train["label"].shape == (3,)
    val = next(iter(dm.val_dataloader()))
    assert val["video"].shape == (3, 2, 3, 8, 28, 28) and val["starts"].shape == (3, 2)
    with pytest.raises(ValueError, match="unknown video preset"):
        VideoFolderDataModule(str(video_root), train_transforms="zoom")


def test_synthetic_datamodule_writes_its_data(tmp_path):
    root = tmp_path / "fresh"
    dm = VideoFolderDataModule(str(root), synthetic=True, synthetic_videos_per_class={"train": 1, "test": 1},
                               synthetic_num_frames=6, synthetic_frame_size=(16, 22), resize=None, crop_size=16,
                               clip_len=4)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 6 and dm.test_set[0]["video"].shape == (10, 3, 4, 16, 16)
    with pytest.raises(DataError, match="does not exist"):
        VideoFolderDataModule(str(tmp_path / "nothing")).setup("fit")
