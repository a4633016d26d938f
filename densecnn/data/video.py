"""Video classification data: ``root/<class>/<video>.{mp4,avi}``, decoded with PyAV, served as clips.

* Samples and splits (``densecnn.data.video_lists``, re-exported here): a sample is a video file or a frame
  folder; splits come from UCF101's lists, Kinetics CSVs or MMAction2 lists when present or asked for,
  otherwise from a deterministic per-class split of the class folders (``video_splits``).
* Decoding: frames are converted to RGB and resized by swscale to ``resize`` (C3D's 128x171, Tran et al.
  Section 3.2; an int scales the short side and keeps the aspect ratio). An item decodes only the frames its
  clips use (``FrameStore.read`` -> ``decode_frames``): it seeks to the keyframe before a clip and decodes
  forward to the clip's last frame, mapping frames to indices by the timestamps demuxed once per file
  (``video_index``); clips close together share one forward pass (``seek_runs``). The frames are the arrays
  a whole decode (``decode_video``) gives. With ``cache_dir`` a video is instead decoded whole once and cached
  on disk as ``.npy``, so later epochs read the resized frames instead of decoding again.
* Frame folders: a sample that is a directory of numbered images (``img_00001.jpg``, ``000001.png``: MMAction2's
  rawframes) is read image by image, only the clip's frames, resized like decoded frames.
* Clips: ``clip_len`` frames taken every ``frame_stride`` frames. Training draws one random clip per video
  per visit; evaluation takes ``clips_per_video`` uniformly spaced clips (their starts evenly spread from the
  first possible start to the last), and the video's prediction is the softmax averaged over them.
* Views: ``crops_per_clip=3`` cuts three ``crop_size`` squares from every clip, at the start, centre and end of
  the frame's long side and centred on its short side (C3D / MMAction2's ``ThreeCrop``), before the transform;
  a video then has ``clips_per_video * 3`` views and its prediction averages the softmax over all of them.
* Videos shorter than a clip's span (``(clip_len - 1) * frame_stride + 1`` frames) follow
  ``short_video_policy``: ``loop`` (default) plays the video again from its first frame; ``pad`` repeats the
  last frame. Either way every clip has ``clip_len`` frames.
* Augmentation: one albumentations pipeline applied to all frames of a clip at once (the ``images`` target),
  so the crop, flip and colour change are the same for every frame and motion is preserved.
* Randomness: each item draws one seed from torch's generator (which ``SeededDataset`` seeds from run seed,
  epoch and index, ``densecnn.data.seeding``); the random clip start and a separate augmentation seed for every
  clip of the item come from it. So every clip of every video in every epoch gets its own crop and flip (with
  ``uniform`` sampling too), and runs repeat exactly; evaluation transforms draw nothing.
* Bad input: a header announcing a frame or two more than decode is tolerated with a warning
  (``check_frame_count``); an unreadable, empty or truncated file raises ``DataError`` naming it, or with
  ``skip_corrupt=True`` is dropped with a warning when the dataset is built (each file is decoded once to
  check it, which the cache then reuses); a class folder without videos is an error.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .image_folder import DataError
from .video_lists import (FRAME_SUFFIXES, SPLIT_LIST_DIRS, VIDEO_SUFFIXES, find_split_lists,  # noqa: F401
                          find_video_classes, is_frame_dir, read_split_lists, samples_in, video_splits)

ShortVideoPolicy = Literal["loop", "pad"]
C3D_RESIZE = (128, 171)


# ---- decoding and caching ------------------------------------------------------------------------------------
# A file may decode a frame or two fewer than its header announces: some encoders count frames they never
# write or that the decoder drops (PyAV issue 976). A shortfall up to this many frames, or this fraction of the
# announced count when that is larger, is tolerated with a warning; more is a truncated file.
FRAME_SHORTFALL_FRAMES = 2
FRAME_SHORTFALL_FRACTION = 0.01


def resized_shape(height: int, width: int, resize: int | Sequence[int] | None) -> tuple[int, int]:
    """The (H, W) a frame of ``height`` x ``width`` is resized to: ``resize`` = (H, W) as given; an int scales the
    short side to it and keeps the aspect ratio (rounded half up: 240x320 -> 128 gives C3D's 128x171); None keeps
    the size."""
    if resize is None:
        return height, width
    if isinstance(resize, (int, np.integer)):
        scale = int(resize) / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    return int(resize[0]), int(resize[1])


def announced_frames(stream: av.video.stream.VideoStream) -> int:
    """The frame count the container header announces for ``stream`` (0 when it does not say)."""
    return int(stream.frames or 0)


def check_frame_count(path: str | os.PathLike, announced: int, decoded: int) -> None:
    """Raise DataError when fewer than ``announced`` frames decoded by more than the tolerated shortfall
    (``FRAME_SHORTFALL_FRAMES`` or ``FRAME_SHORTFALL_FRACTION`` of ``announced``); warn, naming the file, for a
    smaller shortfall."""
    missing = announced - decoded
    if not announced or missing <= 0:
        return
    tolerated = max(FRAME_SHORTFALL_FRAMES, int(FRAME_SHORTFALL_FRACTION * announced))
    if missing > tolerated:
        raise DataError(f"{path}: truncated video: its header announces {announced} frames but only {decoded} "
                        f"decode")
    warnings.warn(f"{path}: its header announces {announced} frames but {decoded} decode; using the {decoded} "
                  f"frames (a shortfall of up to {tolerated} frames is normal with some encoders)", stacklevel=3)


def decode_video(path: str | os.PathLike, resize: int | Sequence[int] | None = C3D_RESIZE) -> np.ndarray:
    """All frames of ``path`` as (T, H, W, 3) uint8 RGB, resized to ``resize`` (see ``resized_shape``: (H, W), or
    an int for the short side) unless None.

    Raises DataError naming the file when it cannot be opened, has no video stream or frames, or is
    truncated (decoding fails part-way, or fewer frames decode than its header announces by more than
    ``check_frame_count`` tolerates).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            announced = announced_frames(stream)
            size: dict[str, int] | None = None
            for frame in container.decode(stream):
                if size is None:
                    height, width = resized_shape(frame.height, frame.width, resize)
                    size = {} if resize is None else {"height": height, "width": width}
                frames.append(frame.to_ndarray(format="rgb24", **size))
    except av.FFmpegError as err:
        where = f" after {len(frames)} frames" if frames else ""
        raise DataError(f"{path}: cannot decode video{where}; the file is corrupt or truncated ({err})") from err
    if not frames:
        raise DataError(f"{path}: holds no decodable video frames (corrupt or truncated file)")
    check_frame_count(path, announced, len(frames))
    return np.stack(frames)


# ---- decoding only what a clip needs (seek) ------------------------------------------------------------------
# A frame's index is its rank among the stream's presentation timestamps, read once per file by demuxing the
# packets without decoding them (about 1.5 ms for 250 packets, against about 1 ms to decode ONE 320x240 frame).
# This is torchvision.io's ``read_video_timestamps`` idea: exact with B-frames (packets arrive in decode order),
# negative first timestamps (edit lists) and variable frame rates, where index = pts * time_base * fps is not.
# The packets' keyframe flags tell where a decoder can start, so a clip seeks to the last keyframe at or
# before its first frame and decodes forward to its last (Tran et al. train on random 16-frame clips,
# Section 3.2: decoding whole videos for them costs 10-20x the frames used).
SEEK_SAVING_FRAMES = 4  # seek to the next clip only when that skips more than this many frames of decoding
INDEX_MEMO_SIZE = 4096  # files whose timestamp index a FrameStore keeps (per worker process)
FRAME_IMAGE_PREFERRED_PREFIX = "img_"  # MMAction2's rawframes keep RGB frames beside flow_x_/flow_y_ images


class FrameCountChanged(Exception):
    """Decoding showed that a video has fewer frames than its index said (the store now knows the real count,
    within the tolerated shortfall): plan the clips again with ``FrameStore.num_frames``."""


class _CannotSeek(Exception):
    """The file's timestamps do not map decoded frames to indices one to one: decode it whole instead."""


@dataclass
class VideoIndex:
    """A video stream's sorted presentation timestamps (frame i has ``pts[i]``), the indices of its keyframes,
    the frame count its header announces (0 when it does not say) and the usable frame count."""

    pts: np.ndarray
    keyframes: np.ndarray
    announced: int
    num_frames: int
    seekable: bool = True

    def index_of(self, pts: int | None) -> int:
        if pts is None:
            raise _CannotSeek("a decoded frame has no timestamp")
        i = int(np.searchsorted(self.pts, pts))
        if i >= len(self.pts) or self.pts[i] != pts:
            raise _CannotSeek(f"a decoded frame's timestamp {pts} is not among the packets'")
        return i

    def keyframe_at_or_before(self, index: int) -> int:
        """Position in ``keyframes`` of the last keyframe at or before frame ``index`` (-1: none)."""
        return int(np.searchsorted(self.keyframes, index, side="right")) - 1


def video_index(path: str | os.PathLike) -> VideoIndex:
    """Demux (without decoding) the first video stream of ``path``: see ``VideoIndex``. A file whose packets lack
    timestamps or repeat one is marked not seekable (it is decoded whole). Raises DataError naming the file when
    it cannot be read, holds no frames, or announces more frames than it holds beyond ``check_frame_count``'s
    tolerance."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            announced = announced_frames(stream)
            pts, keys = [], []
            for packet in container.demux(stream):
                if packet.size:  # the demuxer ends with an empty flush packet
                    pts.append(packet.pts)
                    keys.append(packet.is_keyframe)
    except av.FFmpegError as err:
        raise DataError(f"{path}: cannot read video; the file is corrupt or truncated ({err})") from err
    if not pts:
        raise DataError(f"{path}: holds no decodable video frames (corrupt or truncated file)")
    check_frame_count(path, announced, len(pts))
    if any(p is None for p in pts):
        return VideoIndex(np.zeros(0, np.int64), np.zeros(0, np.int64), announced, len(pts), seekable=False)
    pts_array = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts_array, kind="stable")
    sorted_pts = pts_array[order]
    seekable = bool(np.all(np.diff(sorted_pts) > 0))
    keyframes = np.flatnonzero(np.asarray(keys, dtype=bool)[order])
    return VideoIndex(sorted_pts, keyframes, announced, len(pts), seekable=seekable and len(keyframes) > 0)


def _rgb(frame: av.VideoFrame, resize: int | Sequence[int] | None) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB, resized by swscale (the same call as ``decode_video``)."""
    if resize is None:
        return frame.to_ndarray(format="rgb24")
    height, width = resized_shape(frame.height, frame.width, resize)
    return frame.to_ndarray(format="rgb24", height=height, width=width)


def seek_runs(index: VideoIndex, wanted: np.ndarray) -> list[np.ndarray]:
    """Split sorted unique frame indices into runs decoded in one forward pass each: a new run (a new seek)
    starts where the keyframe before the next wanted frame lies more than ``SEEK_SAVING_FRAMES`` after the
    previous wanted frame, i.e. where seeking skips decoding that decoding forward would do. Clips that cover
    most of a video therefore share one pass; clips far apart seek each."""
    runs, begin = [], 0
    for j in range(1, len(wanted)):
        k = index.keyframe_at_or_before(int(wanted[j]))
        if k >= 0 and index.keyframes[k] > wanted[j - 1] + SEEK_SAVING_FRAMES:
            runs.append(wanted[begin:j])
            begin = j
    runs.append(wanted[begin:])
    return runs


def _decode_forward(container, stream, index: VideoIndex, run: np.ndarray, resize) -> tuple[dict, int, int]:
    """Decode from the current (just sought) position: ``({i: frame} for i in run, first trusted index, last
    decoded index)``; stops after ``run[-1]``. Frames output before the first keyframe (an open GOP's leading
    B-frames, whose references were skipped) are not trusted; the decoded indices must follow one another."""
    wanted, out = set(run.tolist()), {}
    first = last = -1
    for frame in container.decode(stream):
        if first < 0:
            if not frame.key_frame:
                continue
            first = last = index.index_of(frame.pts)
            if first > run[0]:
                return out, first, last  # landed after the first wanted frame: seek further back
        else:
            i = index.index_of(frame.pts)
            if i != last + 1:
                raise _CannotSeek(f"decoded frame {i} follows frame {last}")
            last = i
        if last in wanted:
            out[last] = _rgb(frame, resize)
        if last >= run[-1]:
            break
    return out, first, last


def decode_frames(path: str | os.PathLike, index: VideoIndex, indices: np.ndarray,
                  resize: int | Sequence[int] | None = C3D_RESIZE) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) of ``path`` as (len(indices), H, W, 3) uint8 RGB, the
    same arrays ``decode_video(path, resize)[indices]`` gives, decoding only from the keyframe before each run
    of wanted frames (``seek_runs``) to its last frame.

    Raises FrameCountChanged (after ``check_frame_count``: a DataError for real truncation) when the stream
    ends before a wanted frame, and _CannotSeek when timestamps do not map frames to indices.
    """
    wanted = np.unique(indices)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for run in seek_runs(index, wanted):
                k = index.keyframe_at_or_before(int(run[0]))
                while True:
                    target = index.pts[index.keyframes[k]] if k >= 0 else index.pts[0]
                    container.seek(int(target), stream=stream, backward=True, any_frame=False)
                    got, first, last = _decode_forward(container, stream, index, run, resize)
                    if 0 <= first <= run[0]:
                        break
                    if first < 0 or k <= 0:
                        raise _CannotSeek("no keyframe before the wanted frames")
                    k -= 1  # the seek landed after the wanted frame (e.g. a B-frame pyramid): one keyframe back
                if last < run[-1]:  # the stream ended early: fewer frames decode than its packets
                    check_frame_count(path, index.announced or len(index.pts), last + 1)
                    index.num_frames = last + 1
                    raise FrameCountChanged(path)
                frames.update(got)
    except av.FFmpegError as err:
        raise DataError(f"{path}: cannot decode video; the file is corrupt or truncated ({err})") from err
    return np.stack([frames[int(i)] for i in indices])


# ---- frame folders (MMAction2's rawframes: <video>/img_00001.jpg ...) ------------------------------------------
def frame_folder_images(folder: str | os.PathLike) -> list[Path]:
    """The frame images of ``folder`` in frame order: .jpg/.jpeg/.png files named by a number (``img_00001.jpg``,
    ``000001.png``), sorted by it. When several name prefixes are present (MMAction2 keeps ``flow_x_``/``flow_y_``
    beside ``img_``), ``img_`` is used. Raises DataError naming the folder for no frames, mixed prefixes without
    ``img_``, a repeated number or a gap in the numbering."""
    folder = Path(folder)
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in folder.iterdir():
        match = re.fullmatch(r"(.*?)(\d+)", p.stem)
        if match and p.suffix.lower() in FRAME_SUFFIXES and p.is_file():
            groups.setdefault(match.group(1), []).append((int(match.group(2)), p))
    if not groups:
        raise DataError(f"{folder}: frame folder holds no numbered frame images ({', '.join(FRAME_SUFFIXES)}, "
                        f"e.g. img_00001.jpg)")
    if len(groups) > 1 and FRAME_IMAGE_PREFERRED_PREFIX not in groups:
        raise DataError(f"{folder}: frame images with several name prefixes {sorted(groups)}; expected one "
                        f"(or {FRAME_IMAGE_PREFERRED_PREFIX!r} among them)")
    prefix = next(iter(groups)) if len(groups) == 1 else FRAME_IMAGE_PREFERRED_PREFIX
    numbered = sorted(groups[prefix])
    for (a, pa), (b, pb) in itertools.pairwise(numbered):
        if b == a:
            raise DataError(f"{folder}: two frame images carry number {a}: {pa.name} and {pb.name}")
        if b != a + 1:
            raise DataError(f"{folder}: frame numbering has a gap: {pa.name} is followed by {pb.name} "
                            f"(frames {a + 1}..{b - 1} are missing)")
    return [p for _, p in numbered]


def read_frame_image(path: Path, resize: int | Sequence[int] | None = C3D_RESIZE) -> np.ndarray:
    """One frame image as (H, W, 3) uint8 RGB, resized by swscale like a decoded video frame (``_rgb``)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # frames carry no EXIF turn
    if bgr is None:
        raise DataError(f"{path}: cannot read frame image (corrupt or not an image)")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if resize is None:
        return rgb
    return _rgb(av.VideoFrame.from_ndarray(rgb, format="rgb24"), resize)


class FrameStore:
    """Decoded, resized frames of a video file or a frame folder.

    * ``num_frames(path)`` then ``read(path, indices)``: the frames a clip needs. Without ``cache_dir`` a video
      file is sought and decoded from the keyframe before the clip (``decode_frames``; ``seek=False`` decodes
      the whole video every time instead), and a frame folder reads just those images.
    * With ``cache_dir``, a video file's first visit decodes it whole and stores the frames as ``.npy``; later
      visits memory-map them. An entry is keyed by the file's absolute path, size, modification time and the
      resize, so an edited video or another resolution is decoded again, and is written atomically (several
      workers may decode the same video at once). Frame folders are not cached (they are read per frame).
    * ``load(path)``: all frames (the cache entry, or a whole decode).

    Per-file timestamp indices and folder listings are kept in memory (``INDEX_MEMO_SIZE`` files, per worker).
    """

    def __init__(self, resize: int | Sequence[int] | None = C3D_RESIZE, cache_dir: str | os.PathLike | None = None,
                 seek: bool = True):
        self.resize = resize if resize is None or isinstance(resize, (int, np.integer)) else tuple(resize)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seek = seek
        self._memo: OrderedDict[str, VideoIndex | list[Path]] = OrderedDict()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def cache_path(self, path: str | os.PathLike) -> Path | None:
        if self.cache_dir is None:
            return None
        path = Path(path).resolve()
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{self.resize}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def load(self, path: str | os.PathLike) -> np.ndarray:
        if Path(path).is_dir():
            return np.stack([read_frame_image(p, self.resize) for p in self._listing(path)])
        if not Path(path).is_file():
            raise DataError(f"{path}: video file not found")
        cached = self.cache_path(path)
        if cached is not None and cached.is_file():
            try:
                return np.load(cached, mmap_mode="r")
            except (OSError, ValueError):
                cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
        frames = decode_video(path, self.resize)
        if cached is not None:
            tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, frames)
            os.replace(tmp, cached)
        return frames

    def _remember(self, key: str, value):
        self._memo[key] = value
        if len(self._memo) > INDEX_MEMO_SIZE:
            self._memo.popitem(last=False)
        return value

    def _listing(self, folder: str | os.PathLike) -> list[Path]:
        key = str(folder)
        if key not in self._memo:
            self._remember(key, frame_folder_images(folder))
        return self._memo[key]

    def _index(self, path: str | os.PathLike) -> VideoIndex:
        key = str(path)
        if key not in self._memo:
            self._remember(key, video_index(path))
        return self._memo[key]

    def _decodes_whole(self) -> bool:
        return self.cache_dir is not None or not self.seek

    def num_frames(self, path: str | os.PathLike) -> int:
        """Frames of ``path``: the images of a frame folder; for a video file its packets (memoised), or the
        decoded frames when it is cached, seeking is off, or its timestamps do not allow seeking."""
        if Path(path).is_dir():
            return len(self._listing(path))
        if self._decodes_whole():
            return len(self.load(path))
        if not Path(path).is_file():
            raise DataError(f"{path}: video file not found")
        return self._index(path).num_frames

    def read(self, path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames ``indices`` (below ``num_frames(path)``) as (N, H, W, 3) uint8 RGB. Raises FrameCountChanged
        when decoding finds fewer frames than ``num_frames`` said (ask it again), DataError for a bad file."""
        indices = np.asarray(indices, dtype=np.int64)
        if Path(path).is_dir():
            listing = self._listing(path)
            return np.stack([read_frame_image(listing[int(i)], self.resize) for i in indices])
        if not self._decodes_whole():
            index = self._index(path)
            if index.seekable:
                try:
                    return decode_frames(path, index, indices, self.resize)
                except _CannotSeek:
                    index.seekable = False  # decoded whole from now on
        frames = self.load(path)
        if len(frames) <= indices.max(initial=0):
            if not self._decodes_whole():
                self._index(path).num_frames = len(frames)
            raise FrameCountChanged(path)
        return frames[indices]


# ---- clip sampling ---------------------------------------------------------------------------------------------
def clip_span(clip_len: int, frame_stride: int) -> int:
    """Frames a clip covers: ``(clip_len - 1) * frame_stride + 1``."""
    return (clip_len - 1) * frame_stride + 1


def clip_indices(num_frames: int, start: int, clip_len: int, frame_stride: int,
                 policy: ShortVideoPolicy = "loop") -> np.ndarray:
    """Frame indices of the clip starting at ``start``; past the end, ``loop`` wraps to the first frame and
    ``pad`` repeats the last."""
    if num_frames < 1:
        raise ValueError("clip_indices: the video has no frames")
    indices = start + np.arange(clip_len) * frame_stride
    if policy == "loop":
        return indices % num_frames
    if policy == "pad":
        return np.minimum(indices, num_frames - 1)
    raise ValueError(f"short_video_policy must be 'loop' or 'pad', got {policy!r}")


def uniform_starts(num_frames: int, span: int, num_clips: int) -> np.ndarray:
    """``num_clips`` starts spread evenly from 0 to the last start that fits (all 0 for a short video)."""
    last = max(num_frames - span, 0)
    return np.round(np.linspace(0, last, num_clips)).astype(np.int64)


def random_start(rng: np.random.Generator, num_frames: int, span: int) -> int:
    """A uniformly drawn first frame for a span of ``span`` frames in a video of ``num_frames`` (0 when shorter).

    Args:
        rng: the sample's seeded generator.
        num_frames: frames in the video.
        span: frames the clip covers (``clip_len x frame_stride``).
    """
    return int(rng.integers(0, max(num_frames - span, 0) + 1))


def three_crop_offsets(height: int, width: int, crop_size: int) -> list[tuple[int, int]]:
    """(top, left) of C3D / MMAction2 ``ThreeCrop`` views: ``crop_size`` squares at the start, centre and end of
    the long side, centred on the short side (left, centre, right for a landscape frame)."""
    if min(height, width) < crop_size:
        raise ValueError(f"frames of {height}x{width} are smaller than crop_size {crop_size}")
    along = [0, (max(height, width) - crop_size) // 2, max(height, width) - crop_size]
    across = (min(height, width) - crop_size) // 2
    return [(across, a) if width >= height else (a, across) for a in along]


# ---- discovery and splits: densecnn.data.video_lists (class folders, UCF101 / Kinetics / MMAction2 lists,
# frame folders), re-exported above ------------------------------------------------------------------------


# ---- the dataset -----------------------------------------------------------------------------------------------
class VideoClipDataset(Dataset):
    """Clips of the videos in ``samples``.

    ``sampling="random"``: item i is one random clip of video i, ``{"video": (C, T, H, W), "label", "path",
    "index", "starts": (1,)}``. ``sampling="uniform"``: item i holds video i's ``clips_per_video`` uniformly
    spaced clips, ``"video": (K, C, T, H, W)`` and ``"starts": (K,)``; with ``crops_per_clip=3`` each clip gives
    three views (clip-major: clip 0's left, centre, right, then clip 1's ...), ``"video": (3K, C, T, H, W)``,
    ``"starts": (3K,)`` and ``"crops": (3K, 2)``, each view's (top, left) in the decoded frames.

    Args:
        samples: ``(path, label)`` pairs (label -1 for unlabelled videos).
        transform: an albumentations ``Compose`` ending in ``ToTensorV2``, called as ``transform(images=...)``
            on a clip's (T, H, W, 3) frames; None gives float tensors in [0, 1].
        frames: where decoded frames come from (resize, optional disk cache).
        seed: fixes the random clips and augmentations of item i regardless of torch's generator (tests,
            benchmarks); None (default) draws each sample's seed from torch, which ``SeededDataset`` (or
            ``seed_everything``) controls.
        crops_per_clip: 1 (the transform crops) or 3 (``three_crop_offsets`` views of ``crop_size``, cut before
            the transform; ``uniform`` sampling only, the test protocol).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, clip_len: int = 16, frame_stride: int = 1,
                 sampling: Literal["random", "uniform"] = "random", clips_per_video: int = 10,
                 transform: Callable | None = None, frames: FrameStore | None = None,
                 short_video_policy: ShortVideoPolicy = "loop", skip_corrupt: bool = False, seed: int | None = None,
                 crops_per_clip: int = 1, crop_size: int | None = None):
        if clip_len < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError(f"clip_len ({clip_len}), frame_stride ({frame_stride}) and clips_per_video "
                             f"({clips_per_video}) must be positive")
        if crops_per_clip not in (1, 3):
            raise ValueError(f"crops_per_clip must be 1 or 3 (left/centre/right), got {crops_per_clip}")
        if crops_per_clip == 3 and (sampling != "uniform" or not crop_size):
            raise ValueError("crops_per_clip=3 needs sampling='uniform' and a crop_size")
        if sampling not in ("random", "uniform"):
            raise ValueError(f"sampling must be 'random' or 'uniform', got {sampling!r}")
        if short_video_policy not in ("loop", "pad"):
            raise ValueError(f"short_video_policy must be 'loop' or 'pad', got {short_video_policy!r}")
        self.samples = list(samples)
        self.clip_len, self.frame_stride = clip_len, frame_stride
        self.sampling, self.clips_per_video = sampling, clips_per_video
        self.transform = transform
        self.frames = frames or FrameStore()
        self.short_video_policy = short_video_policy
        self.seed = seed
        self.crops_per_clip, self.crop_size = crops_per_clip, crop_size
        if skip_corrupt:
            self._drop_unreadable()
        if not self.samples:
            raise DataError("no videos to sample clips from")

    def _drop_unreadable(self) -> None:
        kept, bad = [], []
        for path, label in self.samples:
            try:
                self.frames.load(path)
                kept.append((path, label))
            except DataError as err:
                bad.append(str(err))
        if bad:
            warnings.warn(f"skipping {len(bad)} unreadable video(s): " + "; ".join(bad[:5])
                          + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""), stacklevel=3)
        self.samples = kept

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def span(self) -> int:
        return clip_span(self.clip_len, self.frame_stride)

    def _sample_seed(self, index: int) -> int:
        if self.seed is not None:
            return int(np.random.default_rng([self.seed, index]).integers(2**31 - 1))
        return int(torch.randint(2**31 - 1, ()).item())

    def _clip(self, clip: np.ndarray, seed: int, crop: tuple[int, int] | None = None) -> torch.Tensor:
        """(C, T, H, W) tensor of a clip's (T, H, W, 3) frames, cropped to ``crop`` and transformed."""
        if crop is not None:
            top, left = crop
            clip = clip[:, top:top + self.crop_size, left:left + self.crop_size]
        clip = np.ascontiguousarray(clip)
        if self.transform is None:
            out = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255)
        else:
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(seed)
            out = self.transform(images=clip)["images"]  # (T, C, H, W), one set of parameters for all frames
        return out.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W), the layout of Conv3d

    def _crops(self, path: str, height: int, width: int) -> list[tuple[int, int] | None]:
        if self.crops_per_clip == 1:
            return [None]
        try:
            return three_crop_offsets(height, width, self.crop_size)
        except ValueError as err:
            raise DataError(f"{path}: cannot cut crops_per_clip=3 views: {err}") from err

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        seed = self._sample_seed(index)
        try:
            return self._item(index, path, label, seed)
        except FrameCountChanged:  # the video ended before its index said: the same draws, the real count
            return self._item(index, path, label, seed)

    def _item(self, index: int, path: str, label: int, seed: int) -> dict:
        num_frames = self.frames.num_frames(path)
        rng = np.random.default_rng(seed)
        if self.sampling == "random":
            starts = np.array([random_start(rng, num_frames, self.span)])
        else:
            starts = uniform_starts(num_frames, self.span, self.clips_per_video)
        clip_frames = [clip_indices(num_frames, int(s), self.clip_len, self.frame_stride, self.short_video_policy)
                       for s in starts]
        # only the frames the clips use are decoded (or read from the cache / the frame folder)
        frames = self.frames.read(path, np.concatenate(clip_frames))
        frames = frames.reshape(len(starts), self.clip_len, *frames.shape[1:])
        crops = self._crops(path, frames.shape[2], frames.shape[3])
        views = [(k, int(s), c) for k, s in enumerate(starts) for c in crops]  # clip-major
        seeds = rng.integers(2**31 - 1, size=len(views))  # its own augmentation draw for every view
        clips = [self._clip(frames[k], int(view_seed), c) for (k, _, c), view_seed in zip(views, seeds)]
        item = {"video": clips[0] if self.sampling == "random" else torch.stack(clips), "label": label, "path": path,
                "index": index, "starts": torch.tensor([s for _, s, _ in views]), "num_frames": num_frames}
        if self.crops_per_clip > 1:
            item["crops"] = torch.tensor([c for _, _, c in views])
        return item
