"""Frame-folder videos (MMAction2's rawframes, ``<video>/img_00001.jpg``): clips are the images written
(lossless PNG: exact), only the clip's images are read, resizing matches a decoded video's, and bad folders
are named."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from densecnn.data import DataError, video
from densecnn.data.synthetic.video import write_mp4
from densecnn.data.video import FrameStore, VideoClipDataset, decode_video, frame_folder_images


def smooth_frames(num_frames: int = 20, height: int = 24, width: int = 32) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([x * 3 + t * 4, y * 4 + t * 2, 120 + 0 * t], axis=-1).clip(0, 255).astype(np.uint8)


def write_folder(folder: Path, frames: np.ndarray, name: str = "img_{:05d}.png", first: int = 1, **params) -> Path:
    folder.mkdir(parents=True)
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(folder / name.format(i + first)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), *params.values())
    return folder


def test_png_frame_folder_clips_are_the_frames_written(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(20, 24, 32, 3), dtype=np.uint8)
    folder = write_folder(tmp_path / "v_001", frames)
    store = FrameStore(None)
    assert store.num_frames(folder) == 20
    np.testing.assert_array_equal(store.read(folder, [19, 0, 7, 7]), frames[[19, 0, 7, 7]])
    dataset = VideoClipDataset([(str(folder), 3)], clip_len=8, frame_stride=2, sampling="uniform",
                               clips_per_video=2, frames=store)
    item = dataset[0]
    assert item["num_frames"] == 20 and item["starts"].tolist() == [0, 5] and item["label"] == 3
    for clip, start in zip(item["video"], (0, 5)):
        pixels = clip.permute(1, 2, 3, 0).mul(255).round().byte().numpy()
        np.testing.assert_array_equal(pixels, frames[start:start + 16:2])


def test_only_the_clips_images_are_read(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "v", smooth_frames())
    read = []
    original = video.read_frame_image
    monkeypatch.setattr(video, "read_frame_image", lambda path, resize: read.append(path.name) or original(path, resize))
    item = VideoClipDataset([(str(folder), 0)], clip_len=4, seed=1, frames=FrameStore(None))[0]
    start = int(item["starts"][0])
    assert read == [f"img_{i + 1:05d}.png" for i in range(start, start + 4)]


def test_names_sort_by_their_number_and_rgb_frames_are_picked_beside_flow(tmp_path):
    frames = smooth_frames(12)
    folder = write_folder(tmp_path / "unpadded", frames, name="{}.jpg", first=0)  # 0.jpg ... 11.jpg
    assert [p.name for p in frame_folder_images(folder)] == [f"{i}.jpg" for i in range(12)]
    mmaction = write_folder(tmp_path / "rawframes", frames[:3])
    for i in range(1, 4):
        (mmaction / f"flow_x_{i:05d}.jpg").write_bytes(b"")
        (mmaction / f"flow_y_{i:05d}.jpg").write_bytes(b"")
    (mmaction / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_folder_images(mmaction)] == ["img_00001.png", "img_00002.png", "img_00003.png"]


def test_resize_matches_a_decoded_videos(tmp_path):
    """The same content as JPEG frames and as an H.264 file, resized by the short side to 16 (C3D-style):
    equal within the two codecs' losses."""
    frames = smooth_frames(10, 48, 64)
    folder = write_folder(tmp_path / "jpg", frames, name="img_{:05d}.jpg", quality=(cv2.IMWRITE_JPEG_QUALITY, 95))
    write_mp4(tmp_path / "same.mp4", frames, qp=0)
    from_folder = FrameStore(16).read(folder, np.arange(10))
    from_video = decode_video(tmp_path / "same.mp4", 16)
    assert from_folder.shape == from_video.shape == (10, 16, 21, 3)
    difference = np.abs(from_folder.astype(int) - from_video.astype(int))
    assert difference.mean() < 1.5 and difference.max() <= 6


def test_bad_frame_folders_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: frame folder holds no numbered frame images"):
        FrameStore(None).num_frames(empty)
    gap = write_folder(tmp_path / "gap", smooth_frames(5))
    (gap / "img_00003.png").unlink()
    with pytest.raises(DataError, match=r"gap: frame numbering has a gap: img_00002.png is followed by img_00004"):
        VideoClipDataset([(str(gap), 0)], clip_len=2, frames=FrameStore(None))[0]
    broken = write_folder(tmp_path / "broken", smooth_frames(5))
    (broken / "img_00002.png").write_bytes(b"not an image")
    store = FrameStore(None)
    with pytest.raises(DataError, match=r"broken/img_00002.png: cannot read frame image"):
        store.read(broken, [0, 1])
    good = write_folder(tmp_path / "ok", smooth_frames(4))
    with pytest.warns(UserWarning, match="skipping 1 unreadable video"):
        kept = VideoClipDataset([(str(broken), 0), (str(good), 1)], clip_len=2, frames=store, skip_corrupt=True)
    assert [label for _, label in kept.samples] == [1]
    mixed = write_folder(tmp_path / "mixed", smooth_frames(2), name="a_{:03d}.png")
    (mixed / "b_001.png").write_bytes((mixed / "a_001.png").read_bytes())
    with pytest.raises(DataError, match=r"mixed: frame images with several name prefixes"):
        frame_folder_images(mixed)
