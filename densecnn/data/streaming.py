"""Streaming datasets (LitData): a converted copy of a folder dataset, read from a local folder or object storage.

Layout written by ``python -m densecnn.data.convert`` (``densecnn.data.convert``)::

    <out>/densecnn_stream.json     format, version, per-split sample counts, class names, format options
    <out>/<split>/index.json       one LitData dataset per split (``litdata.optimize``)
    <out>/<split>/chunk-*.bin

Each record holds the SOURCE sample: the encoded file bytes (JPEG/PNG images, PNG maps, video files) and the
annotations, never transformed tensors, so the same augmentation pipelines run after reading and a converted
dataset serves every recipe. Records are stored in the folder dataset's own order and carry their index.
Dense records (the ``dense`` folders and NYU's labeled ``.mat``) hold the loader's exact ``load`` arrays
(normals included, labels in the converted class set); KITTI records hold the raw image file and the frame's
ground truth as a sparse array, so evaluation needs nothing but the converted root.

Reading goes by index (``litdata.StreamingDataset.__getitem__``) through the DataModules' own seeded samplers
(``densecnn.data.seeding``), not through LitData's shuffling: the batches, every augmentation draw, the DDP
sharding (``EvalDistributedSampler`` evaluates each sample once) and the mid-epoch resume are those of the folder
path. A root is a local folder, a ``file://`` URL, or a remote ``s3://``/``gs://`` URL that LitData reads with
the environment's credentials (``AWS_*``/``~/.aws`` for S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS) and
caches chunk by chunk under ``cache_dir``.
"""
from __future__ import annotations

import io
import json
import multiprocessing.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # litdata asks PyPI for a newer release otherwise

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from .dense import DenseFolderDataset, DenseSample, source_window  # noqa: E402
from .detection import DetectionDataset, DetectionRecord  # noqa: E402
from .image_folder import DataError, read_rgb  # noqa: E402
from .kitti import KittiDepthDataset  # noqa: E402
from .nyu import NYUDepthV2Dataset  # noqa: E402
from .video import FrameStore  # noqa: E402
from .transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

META_FILE = "densecnn_stream.json"
FORMAT_VERSION = 1
REMOTE_SCHEMES = ("s3://", "gs://")


# --------------------------------------------------------------------------------------------------- roots
def normalise_root(root: str | os.PathLike) -> str:
    """``root`` as LitData reads it: a local path (a ``file://`` URL becomes its path) or a remote URL."""
    text = str(root)
    if text.startswith("file://"):
        return text[len("file://"):]
    return text


def is_remote(root: str | os.PathLike) -> bool:
    """Whether ``root`` is an object-store URL (``s3://``, ``gs://``, ...) rather than a local path.

    Args:
        root: a path or URL.
    """
    return str(root).startswith(REMOTE_SCHEMES)


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local folder or a remote URL (with ``/``).

    Args:
        root: a path or URL.
        *parts: the parts to append.
    """
    if is_remote(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))


def read_meta(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The converted dataset's ``densecnn_stream.json``; a remote one is fetched with LitData's downloader."""
    root = normalise_root(root)
    if is_remote(root):
        from litdata.streaming.downloader import get_downloader

        local_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "densecnn-stream-meta"
        local_dir.mkdir(parents=True, exist_ok=True)
        local = local_dir / f"{abs(hash(root))}-{META_FILE}"
        try:
            get_downloader(root, str(local_dir), []).download_file(join(root, META_FILE), str(local))
        except Exception as err:  # noqa: BLE001 - boto/gcs raise their own types; say which file and why
            raise DataError(f"data.init_args.root: cannot read {join(root, META_FILE)} ({err}); a streaming "
                            f"root is a folder written by python -m densecnn.data.convert") from err
        path = local
    else:
        path = Path(root) / META_FILE
        if not path.is_file():
            raise DataError(f"data.init_args.root: {path} not found; a streaming root is a folder written by "
                            f"python -m densecnn.data.convert (an interrupted conversion has no {META_FILE})")
    meta = json.loads(Path(path).read_text())
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: streaming format version {meta.get('version')}, this densecnn reads "
                        f"{FORMAT_VERSION}: convert the dataset again")
    return meta


def expect_format(meta: dict[str, Any], formats: Sequence[str], root: str) -> None:
    """Check a converted dataset holds one of the formats a DataModule reads.

    Args:
        meta: the dataset's metadata (its ``format``).
        formats: the formats accepted.
        root: the dataset root, for the message.

    Raises:
        DataError: another format, naming the convert command to use.
    """
    if meta["format"] not in formats:
        raise DataError(f"data.init_args.root: {root} holds a converted '{meta['format']}' dataset; this "
                        f"DataModule reads {' or '.join(formats)} (python -m densecnn.data.convert {formats[0]} ...)")


# --------------------------------------------------------------------------------------------------- records
class StreamingRecords:
    """The records of one converted split, by index. LitData's dataset is opened lazily, in the process that
    reads (each DataLoader worker opens its own), and every record is checked to be the one asked for."""

    def __init__(self, root: str | os.PathLike, split: str, meta: dict[str, Any],
                 cache_dir: str | os.PathLike | None = None, max_cache_size: str = "50GB"):
        self.root = normalise_root(root)
        if split not in meta["splits"]:
            raise DataError(f"data.init_args.root: {self.root} has no converted '{split}' split "
                            f"(it has {sorted(meta['splits'])})")
        self.split = split
        self.url = join(self.root, meta["splits"][split].get("stored_as", split))
        self.length = int(meta["splits"][split]["num_samples"])
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.max_cache_size = max_cache_size
        self._dataset = None

    def _open(self):
        from litdata import StreamingDataset

        # batch_decode off: by default a read decodes a window of ~200 neighbouring records, which our shuffled
        # by-index access throws away (0.58 ms against 0.012 ms a record, measured on 1,200 small PNGs)
        return StreamingDataset(self.url, cache_dir=self.cache_dir, max_cache_size=self.max_cache_size,
                                batch_decode=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._dataset is None:  # its len() is this rank's share under DDP; its indices are global
            self._dataset = self._open()
        if not 0 <= index < self.length:
            raise IndexError(f"{self.url}: sample {index} of {self.length}")
        record = self._dataset[int(index)]
        if int(record["index"]) != int(index):
            raise DataError(f"{self.url}: record {index} holds sample {record['index']}; the chunks are out "
                            f"of order (convert the dataset again)")
        return record

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, as stored in a streaming record.

    Args:
        path: the file.

    Raises:
        DataError: the file cannot be read, naming it.
    """
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """``read_rgb`` on encoded bytes (EXIF orientation, 16-bit greyscale and GIFs as the folder path reads
    them); an undecodable record names its source file."""
    try:
        return read_rgb(io.BytesIO(data))
    except DataError as err:
        raise DataError(f"{name}: cannot decode image ({err.__cause__})") from err


# --------------------------------------------------------------------------------------------------- formats
class StreamingImageFolder(Dataset):
    """``ImageFolderDataset``'s samples (``image``, ``label``, ``path`` relative to the source root) read from
    a converted ``image_folder`` split."""

    def __init__(self, records: StreamingRecords, class_names: Sequence[str], transform: Callable | None = None):
        self.records = records
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = decode_rgb(record["image"], record["path"])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        else:
            image = torch.tensor(image).permute(2, 0, 1).float().div(255)
        return {"image": image, "label": int(record["label"]), "path": record["path"]}


def encode_array(array: np.ndarray | None) -> bytes:
    """An array as ``.npy`` bytes (exact: float depth in metres, int64 labels); ``b""`` for a missing map."""
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray | None:
    """Decode an array stored as ``.npy`` bytes in a record (no pickles), or ``None`` for empty bytes.

    Args:
        data: the bytes.
    """
    return np.load(io.BytesIO(data), allow_pickle=False) if data else None


def encode_sparse(array: np.ndarray) -> bytes:
    """A mostly-zero map (KITTI's ground truth: ~5% of pixels for a projected Velodyne scan, ~16% annotated) as
    ``.npz`` bytes of its shape, the flat positions of its non-zero entries and their values: exact, and about
    a tenth of the dense float32 map."""
    flat = np.ascontiguousarray(array).ravel()
    where = np.flatnonzero(flat)
    buffer = io.BytesIO()
    np.savez(buffer, shape=np.asarray(array.shape, np.int64), index=where.astype(np.int64), values=flat[where])
    return buffer.getvalue()


def decode_sparse(data: bytes) -> np.ndarray:
    """Decode a sparse map (``shape``, flat ``index``, ``values``: Velodyne ground truth) to a dense array.

    Args:
        data: the ``.npz`` bytes.
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        out = np.zeros(int(np.prod(stored["shape"])), stored["values"].dtype)
        out[stored["index"]] = stored["values"]
        return out.reshape(tuple(stored["shape"]))


class StreamedDenseSamples:
    """``load`` and ``sample_id`` of a dense dataset read from converted records (``rgb`` and each map as exact
    ``.npy`` arrays, as ``convert.DenseRecords`` stores ``load(i)``); mixed in before the source dataset class,
    whose ``__getitem__`` (joint transform, tensors, evaluation windows) then runs unchanged on them."""

    records: StreamingRecords
    maps: list[str]

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> DenseSample:
        record = self.records[index]
        sample = DenseSample(decode_array(record["rgb"]))
        for key in self.maps:
            setattr(sample, key, decode_array(record[key]))
        if sample.semantic is not None:
            sample.semantic = sample.semantic.astype(np.int64)  # stored as uint16 (``convert.DenseRecords``)
        return sample

    def sample_id(self, index: int) -> tuple[str, str]:
        record = self.records[index]
        return record["name"], record["path"]


class StreamingDenseFolder(StreamedDenseSamples, DenseFolderDataset):
    """``DenseFolderDataset`` whose ``load`` reads a converted ``dense`` record: ``__getitem__`` (the joint
    transform, tensors, ``depth_window``) is the folder dataset's own, so the two cannot drift apart."""

    def __init__(self, records: StreamingRecords, maps: Sequence[str], transform=None, num_classes: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.records, self.maps = records, list(maps)
        self.transform, self.num_classes = transform, num_classes
        self.mean, self.std = tuple(mean), tuple(std)


class StreamingNYU(StreamedDenseSamples, NYUDepthV2Dataset):
    """``NYUDepthV2Dataset`` over a converted ``nyu`` split: each record is the labeled file's frame as
    ``load`` returns it (480x640 image, depth in metres, normals, labels already in the converted class set),
    so ``__getitem__`` is the ``.mat`` path's own, ``depth_full`` (the full-resolution ground truth of the
    standard protocol) and ``depth_window`` (``source_window`` of the stored frame) included."""

    def __init__(self, records: StreamingRecords, maps: Sequence[str], transform=None, *, num_classes: int,
                 class_names: Sequence[str] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, full_depth: bool = False):
        self.records, self.maps, self.transform = records, list(maps), transform
        self.num_classes, self.class_names = num_classes, tuple(class_names) if class_names else None
        self.mean, self.std = tuple(mean), tuple(std)
        if full_depth and ("depth" not in self.maps or source_window(transform, 1, 1) is None):
            raise DataError(f"{records.url}: full_depth (the standard evaluation protocol) needs the 'depth' map "
                            f"and a non-random evaluation transform (maps: {self.maps})")
        self.full_depth, self._file = full_depth, None


class StreamingKitti(StreamedDenseSamples, KittiDepthDataset):
    """``KittiDepthDataset`` over a converted ``kitti`` split: a record holds the raw image file's bytes and the
    frame's ground truth as the split list and ``ground_truth`` source gave it (annotated map or projected
    Velodyne scan, ``encode_sparse``); ``__getitem__`` (kb crop, augmentation, and for evaluation
    ``depth_full``, ``depth_window``, the crop and cap) is the raw-data path's own."""

    def __init__(self, records: StreamingRecords, transform=None, *, full_depth: bool = False,
                 eval_crop: str = "kitti_garg", max_depth: float = 80.0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if full_depth and (transform is None or transform.augment.train):
            raise DataError("full_depth (the evaluation protocol) needs a non-random evaluation transform")
        self.records, self.maps, self.transform, self.full_depth = records, ["depth"], transform, full_depth
        self.eval_crop, self.max_depth = eval_crop, float(max_depth)
        self.mean, self.std = tuple(mean), tuple(std)

    def load(self, index: int) -> DenseSample:
        record = self.records[index]
        return DenseSample(decode_rgb(record["image"], record["path"]), decode_sparse(record["depth"]))


#: the array fields of a ``DetectionRecord`` and their dtypes (JSON round-trips float32 and float64 exactly)
DETECTION_ARRAYS = {"boxes": np.float32, "labels": np.int64, "iscrowd": np.int64, "area": np.float64,
                    "difficult": np.int64}


def detection_record_json(record: DetectionRecord, path: str) -> str:
    """Serialise a detection record (image id, size, annotation ids and box arrays) as JSON for a chunk.

    Args:
        record: the image's record.
        path: the image's path inside the converted dataset.
    """
    fields = {key: np.asarray(getattr(record, key)).tolist() for key in DETECTION_ARRAYS}
    return json.dumps({"image_id": int(record.image_id), "path": path, "width": int(record.width),
                       "height": int(record.height), "ann_ids": list(record.ann_ids), **fields})


class StreamedDetectionRecords:
    """The ``DetectionRecord`` of each converted record, with its encoded image attached (``encoded``)."""

    def __init__(self, records: StreamingRecords):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DetectionRecord:
        stored = self.records[index]
        fields = json.loads(stored["record"])
        arrays = {key: np.asarray(fields.pop(key), dtype).reshape((-1, 4) if key == "boxes" else (-1,))
                  for key, dtype in DETECTION_ARRAYS.items()}
        record = DetectionRecord(**fields, **arrays)
        record.encoded = stored["image"]
        return record

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class StreamingDetection(DetectionDataset):
    """``DetectionDataset`` (its ``__getitem__``: boxes through the same pipeline, crowd/difficult handling) over
    a converted ``coco``/``voc`` split; ``path`` is the image's path relative to the source root."""

    def __init__(self, records: StreamingRecords, transform: Callable, *, keep_ignored: bool = True):
        super().__init__([], transform, keep_ignored=keep_ignored)
        self.records = StreamedDetectionRecords(records)

    def read_image(self, record: DetectionRecord) -> np.ndarray:
        return decode_rgb(record.encoded, record.path)


class StreamingFrameStore(FrameStore):
    """``FrameStore`` over converted ``video`` records: a video's encoded bytes (the source file, a few hundred
    KB where its decoded clips would be tens of MB) are written to a per-process scratch file and decoded there
    by the folder path's own seek-decoding (``decode_frames``), so frames, counts and errors are identical.
    Scratch files are named by record and the newest ``keep`` are kept, so the per-file timestamp index stays
    valid. ``locations`` maps a sample's path (relative to the source root) to its split and index."""

    def __init__(self, records: dict[str, StreamingRecords], locations: dict[str, tuple[str, int]],
                 resize: int | Sequence[int] | None, keep: int = 16):
        super().__init__(resize, cache_dir=None)  # the decoded-frame cache keys on file identity: not for scratch
        self.records, self.locations, self.keep = records, locations, keep
        self._scratch: dict[str, Path] = {}
        self._scratch_dir: tuple[int, Path] | None = None

    def _dir(self) -> Path:
        if self._scratch_dir is None or self._scratch_dir[0] != os.getpid():  # each worker process its own
            folder = Path(tempfile.mkdtemp(prefix="densecnn-stream-"))
            # removed when this process ends (multiprocessing runs these finalizers in DataLoader workers too)
            multiprocessing.util.Finalize(self, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                                          exitpriority=0)
            self._scratch_dir, self._scratch = (os.getpid(), folder), {}
        return self._scratch_dir[1]

    def local(self, path: str | os.PathLike) -> Path:
        key = str(path)
        if key not in self.locations:
            raise DataError(f"{key}: not a video of the converted dataset")
        folder = self._dir()
        if key not in self._scratch:
            split, index = self.locations[key]
            target = folder / f"{split}-{index}{Path(key).suffix}"
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(self.records[split][index]["video"])
            os.replace(tmp, target)
            self._scratch[key] = target
            while len(self._scratch) > self.keep:
                self._scratch.pop(next(iter(self._scratch))).unlink(missing_ok=True)
        return self._scratch[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_scratch": {}, "_scratch_dir": None}

    def load(self, path):
        return super().load(self.local(path))

    def num_frames(self, path) -> int:
        return super().num_frames(self.local(path))

    def read(self, path, indices):
        return super().read(self.local(path), indices)
