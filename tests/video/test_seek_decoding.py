"""Seek decoding: the frames a clip needs, decoded from the keyframe before it, are the very arrays a whole
decode gives (oracle: ``decode_video``), on real H.264 MP4s with a short GOP, with and without B-frames; the
frame-count tolerance and truncation rules hold on this path too."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from densecnn.data import DataError, video
from densecnn.data.video import FrameStore, VideoClipDataset, decode_frames, decode_video, seek_runs, video_index

NUM_FRAMES, GOP = 60, 12


def write_h264(path: Path, *, bframes: int, num_frames: int = NUM_FRAMES, gop: int = GOP, faststart: bool = False,
               height: int = 48, width: int = 64) -> Path:
    """A moving gradient with a frame counter, libx264, a keyframe every ``gop`` frames, ``bframes`` B-frames
    between references (fixed, not adaptive, so they are really there)."""
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "threads": "1",
                          "x264-params": f"bframes={bframes}:b-adapt=0:scenecut=0:keyint={gop}:min-keyint={gop}"}
        for t in range(num_frames):
            rgb = np.stack([(x * 4 + t * 5) % 256, (y * 5 + t * 3) % 256, np.full_like(x, t * 4 % 256)], -1)
            rgb[:8, :8] = 255 if t % 2 else 0
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4s(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("seek")
    return {"ip": write_h264(folder / "ip.mp4", bframes=0), "b": write_h264(folder / "b.mp4", bframes=2)}


def test_the_fixtures_have_short_gops_and_b_frames(mp4s):
    for name, path in mp4s.items():
        index = video_index(path)
        assert index.num_frames == NUM_FRAMES and index.keyframes.tolist() == list(range(0, NUM_FRAMES, GOP))
        with av.open(str(path)) as container:
            decode_order = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
        assert (decode_order != sorted(decode_order)) == (name == "b")  # B-frames arrive before their display


STARTS = [0, 1, 10, 11, 12, 13, 23, 24, 25, 35, 36, 44]  # around the keyframes 0, 12, 24, 36, 48; 44 ends at 59


@pytest.mark.parametrize("name", ["ip", "b"])
@pytest.mark.parametrize("resize", [None, (24, 30)])
def test_seeking_gives_the_frames_of_a_whole_decode(mp4s, name, resize):
    path = mp4s[name]
    whole = decode_video(path, resize)
    index = video_index(path)
    for start in STARTS:
        wanted = np.arange(start, start + 16)
        np.testing.assert_array_equal(decode_frames(path, index, wanted, resize), whole[wanted], err_msg=str(start))
    for wanted in ([NUM_FRAMES - 1], [59, 58, 0, 1, 59], [5, 30, 55], list(range(0, 60, 2))):
        np.testing.assert_array_equal(decode_frames(path, index, np.array(wanted), resize), whole[wanted])


def test_clips_far_apart_seek_each_and_clips_covering_the_video_share_one_pass(mp4s):
    index = video_index(mp4s["b"])  # keyframes 0, 12, 24, 36, 48
    runs = seek_runs(index, np.r_[0:16, 40:56])  # keyframe 36 lies 20 frames after frame 15: seek
    assert [(r[0], r[-1]) for r in runs] == [(0, 15), (40, 55)]
    runs = seek_runs(index, np.r_[0:16, 15:31, 29:45, 44:60])  # uniform clips over the whole video: one pass
    assert [(r[0], r[-1]) for r in runs] == [(0, 59)]
    runs = seek_runs(index, np.r_[0:16, 18:34])  # keyframe 12 is before frame 15: decoding on is cheaper
    assert len(runs) == 1


@pytest.mark.parametrize("sampling", ["random", "uniform"])
def test_dataset_items_are_the_same_with_and_without_seeking(mp4s, sampling):
    samples = [(str(mp4s["b"]), 0), (str(mp4s["ip"]), 1)]
    kwargs = {"clip_len": 16, "frame_stride": 2, "sampling": sampling, "clips_per_video": 3, "seed": 7}
    seeking = VideoClipDataset(samples, frames=FrameStore((24, 30)), **kwargs)
    whole = VideoClipDataset(samples, frames=FrameStore((24, 30), seek=False), **kwargs)
    for i in range(2):
        a, b = seeking[i], whole[i]
        assert a["starts"].tolist() == b["starts"].tolist() and a["num_frames"] == b["num_frames"] == NUM_FRAMES
        assert (a["video"] == b["video"]).all()


def test_header_shortfall_rules_hold_when_seeking(mp4s, monkeypatch):
    path = mp4s["ip"]
    monkeypatch.setattr(video, "announced_frames", lambda stream: NUM_FRAMES + 1)
    with pytest.warns(UserWarning, match=r"ip\.mp4: its header announces 61 frames but 60 decode"):
        assert FrameStore(None).num_frames(path) == NUM_FRAMES
    monkeypatch.setattr(video, "announced_frames", lambda stream: NUM_FRAMES + 10)
    with pytest.raises(DataError, match=r"ip\.mp4: truncated video: its header announces 70 frames"):
        FrameStore(None).num_frames(path)


def _index_claiming(extra: int):
    """video_index as if the container listed ``extra`` packets (and header frames) that never decode."""
    def index(path):
        real = video_index(path)
        step = real.pts[1] - real.pts[0]
        pts = np.r_[real.pts, real.pts[-1] + step * np.arange(1, extra + 1)]
        return video.VideoIndex(pts, real.keyframes, NUM_FRAMES + extra, NUM_FRAMES + extra)
    return index


def test_a_video_ending_before_its_index_is_planned_again_or_refused(mp4s, monkeypatch):
    path = mp4s["b"]
    kwargs = {"clip_len": 16, "sampling": "uniform", "clips_per_video": 2, "seed": 0}
    monkeypatch.setattr(video, "video_index", _index_claiming(2))
    dataset = VideoClipDataset([(str(path), 0)], frames=FrameStore(None), **kwargs)
    with pytest.warns(UserWarning, match=r"b\.mp4: its header announces 62 frames but 60 decode"):
        item = dataset[0]  # the last clip ran into the missing frames: planned again with 60
    whole = decode_video(path, None)
    assert item["num_frames"] == NUM_FRAMES and item["starts"].tolist() == [0, 44]
    np.testing.assert_array_equal(item["video"][1].permute(1, 2, 3, 0).mul(255).round().byte().numpy(), whole[44:])
    monkeypatch.setattr(video, "video_index", _index_claiming(5))
    with pytest.raises(DataError, match=r"b\.mp4: truncated video: its header announces 65 frames but only 60"):
        VideoClipDataset([(str(path), 0)], frames=FrameStore(None), **kwargs)[0]


def test_truncated_files_are_named_on_the_seek_path(tmp_path):
    for faststart in (False, True):  # index at the end (lost when cut) or at the start (frames lost)
        good = write_h264(tmp_path / f"good{faststart}.mp4", bframes=2, faststart=faststart)
        cut = tmp_path / f"cut{faststart}.mp4"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])
        dataset = VideoClipDataset([(str(cut), 0)], clip_len=16, sampling="uniform", clips_per_video=4,
                                   frames=FrameStore(None))
        with pytest.raises(DataError, match=cut.name):
            dataset[0]
