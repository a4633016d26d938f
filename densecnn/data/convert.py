"""Convert a folder dataset into the streaming format (``densecnn.data.streaming``)::

    python -m densecnn.data.convert image_folder data/imagenet  data/imagenet-stream
    python -m densecnn.data.convert dense        data/nyu-folder data/nyu-stream --maps depth normals
    python -m densecnn.data.convert nyu          data/nyu        data/nyu-stream --mapping-file classMapping40.mat
    python -m densecnn.data.convert kitti        data/kitti      data/kitti-stream --train-list train_files.txt \
        --test-list test_files.txt [--ground-truth velodyne] [--skip-missing-gt]
    python -m densecnn.data.convert coco         data/coco       data/coco-stream
    python -m densecnn.data.convert voc          data/VOCdevkit/VOC2007 data/voc07-stream --split trainval test

then copy ``<out_dir>`` to object storage if wanted (``aws s3 sync data/imagenet-stream s3://bucket/imagenet``)
and point the DataModule at it: ``--data.init_args.streaming true --data.init_args.root s3://bucket/imagenet``.

Interruption and re-runs: each split is written to ``<out_dir>/<split>.partial`` and renamed to
``<out_dir>/<split>`` only once LitData has finished it; ``densecnn_stream.json`` is written (atomically) last.
A re-run keeps the splits already finished and restarts an interrupted split from its beginning (its
``.partial`` folder is deleted first), so an interrupted conversion never leaves a readable but incomplete
dataset: the DataModule refuses a folder without ``densecnn_stream.json``. ``--overwrite`` redoes every split.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .streaming import (FORMAT_VERSION, META_FILE, detection_record_json, encode_array,  # noqa: I001 (LITDATA_*)
                        encode_sparse, read_file_bytes)
from .dense import MAP_FOLDERS, DenseFolderDataset, read_class_names
from .detection import VOC_CLASSES, DetectionRecord, read_coco, read_voc
from .video_lists import video_splits
from .image_folder import DataError, ImageFolderDataset, find_classes


# --------------------------------------------------------------------------------------------------- writing
def write_split(make_record: Callable[[int], dict], num_samples: int, out_dir: Path, *, chunk_bytes: str,
                num_workers: int, verbose: bool) -> None:
    """``litdata.optimize`` ``make_record(0 .. num_samples-1)`` into ``out_dir`` by way of ``out_dir.partial``.
    Workers take contiguous slices in order (``keep_data_ordered``), so record ``i`` is sample ``i``; every
    record carries its index and the reader checks it."""
    from litdata import optimize

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier run: restart this split cleanly
    optimize(fn=make_record, inputs=list(range(num_samples)), output_dir=str(partial), chunk_bytes=chunk_bytes,
             num_workers=max(1, min(num_workers, num_samples)), keep_data_ordered=True, reorder_files=False,
             verbose=verbose, start_method="fork" if sys.platform == "linux" else None)
    os.replace(partial, out_dir)


def convert(splits: dict[str, tuple[int, Callable[[int], dict]]], meta: dict[str, Any], out_dir: str | os.PathLike,
            *, chunk_bytes: str = "64MB", num_workers: int = 1, overwrite: bool = False, verbose: bool = True) -> Path:
    """Write every split (skipping those a previous run finished, unless ``overwrite``) and the metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, (num_samples, make_record) in splits.items():
        if isinstance(make_record, str):  # stored as another split (UCF101: val is the test list)
            continue
        target = out / split
        if target.exists() and (overwrite or not (target / "index.json").is_file()):
            shutil.rmtree(target)
        if target.exists():
            if verbose:
                print(f"{target}: already converted, kept (--overwrite redoes it)")
            continue
        if verbose:
            print(f"{target}: {num_samples} samples")
        write_split(make_record, num_samples, target, chunk_bytes=chunk_bytes, num_workers=num_workers,
                    verbose=verbose)
    split_meta = meta.pop("split_meta", {})
    full = {"version": FORMAT_VERSION, **meta,
            "splits": {split: {"num_samples": num_samples, **split_meta.get(split, {}),
                               **({"stored_as": make_record} if isinstance(make_record, str) else {})}
                       for split, (num_samples, make_record) in splits.items()}}
    tmp = out / (META_FILE + ".partial")
    tmp.write_text(json.dumps(full, indent=1))
    os.replace(tmp, out / META_FILE)
    return out


# --------------------------------------------------------------------------------------------------- formats
class FileRecords:
    """Records ``{"index", "image": file bytes, "label", "path"}`` of (relative path, label, file) triples;
    a top-level class so that LitData's workers can unpickle it."""

    def __init__(self, samples: Sequence[tuple[str, int, str]]):
        self.samples = list(samples)

    def __call__(self, index: int) -> dict[str, Any]:
        name, label, path = self.samples[index]
        return {"index": index, "image": read_file_bytes(path), "label": int(label), "path": name}


def image_folder_splits(root: Path, names: Sequence[str] | None, skip_corrupt: bool = False):
    """ImageFolder: ``root/<split>/<class>/*`` in ``ImageFolderDataset``'s order, labels by the training split's
    classes (as ``ImageFolderDataModule`` indexes them)."""
    class_names = find_classes(root / "train")
    names = names or [n for n in ("train", "val", "test") if (root / n).is_dir()]
    splits = {}
    for name in names:
        dataset = ImageFolderDataset(root / name, class_names, skip_corrupt=skip_corrupt)
        samples = [(Path(path).relative_to(root).as_posix(), label, path) for path, label in dataset.samples]
        splits[name] = (len(samples), FileRecords(samples))
    return splits, {"format": "image_folder", "class_names": class_names}


class DenseRecords:
    """Records of a dense dataset: ``load(i)``, the untransformed sample, as exact ``.npy`` arrays (depth in
    metres, normals derived from depth when the folder has none), with its name and path."""

    def __init__(self, dataset: DenseFolderDataset, root: Path):
        self.dataset, self.root = dataset, root

    def __call__(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load(index)
        name, path = self.dataset.sample_id(index)
        semantic = sample.semantic
        if semantic is not None and semantic.size and 0 <= semantic.min() and semantic.max() < 2 ** 16:
            sample.semantic = semantic.astype(np.uint16)  # a quarter of int64's bytes, exact; read back as int64
        return {"index": index, "rgb": encode_array(sample.rgb), "name": name,
                "path": Path(path).relative_to(self.root).as_posix(),
                **{key: encode_array(getattr(sample, key)) for key in MAP_FOLDERS}}


def dense_splits(root: Path, names: Sequence[str] | None, maps: Sequence[str] | None = None,
                 depth_scale: float = 1000.0):
    """The dense folder format (``root/<split>/{rgb,depth,normals,labels}``): the maps of the training split
    (or ``maps``; normals are computed from depth when asked for and absent), as ``DenseDataModule`` loads them."""
    names = names or [n for n in ("train", "val", "test") if (root / n).is_dir()]
    maps = list(maps) if maps else list(DenseFolderDataset(root / "train").maps)
    splits = {}
    for name in names:
        dataset = DenseFolderDataset(root / name, maps, depth_scale=depth_scale, cache_normals=False)
        splits[name] = (len(dataset), DenseRecords(dataset, root))
    return splits, {"format": "dense", "maps": maps, "class_names": read_class_names(root)}


def nyu_splits(root: Path, names: Sequence[str] | None, maps: Sequence[str] | None = None, classes: str = "40",
               mapping_file: str | None = None, depth_key: str = "depths", mat_file: str = "nyu_depth_v2_labeled.mat",
               splits_file: str = "splits.mat", cache_normals: bool = True):
    """The labeled NYU Depth v2 file with the official split (``NYUDepthV2DataModule``'s files; relative names
    under ``root``): each frame as ``NYUDepthV2Dataset.load`` gives it, i.e. the full 480x640 frame (which the
    standard protocol scores on), labels in the ``classes`` set and normals from depth (through the same normals
    cache as the ``.mat`` path, ``<root>/.normals_cache``)."""
    from .nyu import NYUDepthV2Dataset

    def under_root(name):
        return None if name is None else (Path(name) if Path(name).is_absolute() else root / name)

    names = names or ["train", "test"]
    maps = list(maps) if maps else ["depth", "normals", "semantic"]
    mat = under_root(mat_file)
    splits, class_names = {}, None
    for name in names:
        if name not in ("train", "test"):
            raise DataError(f"--split: NYU Depth v2 has the official 'train' and 'test' splits, not {name!r}")
        dataset = NYUDepthV2Dataset(mat, name, splits_file=under_root(splits_file), classes=classes,
                                    mapping_file=under_root(mapping_file), maps=maps, depth_key=depth_key,
                                    cache_normals=cache_normals, normals_cache_dir=root / ".normals_cache")
        class_names = list(dataset.class_names) if dataset.class_names is not None else None
        splits[name] = (len(dataset), DenseRecords(dataset, mat.parent))
    return splits, {"format": "nyu", "maps": maps, "classes": str(classes), "depth_key": depth_key,
                    "class_names": class_names, "mat_file": mat.name}


class KittiRecords:
    """Records ``{"index", "image": the raw image file's bytes, "depth": its ground truth (sparse, exact),
    "name", "path": the image relative to the raw data's root}`` of a KITTI split list."""

    def __init__(self, dataset, root: Path):
        self.dataset, self.root = dataset, root

    def __call__(self, index: int) -> dict[str, Any]:
        sample = self.dataset.load(index)  # reads and checks the image and its ground truth as the DataModule does
        item = self.dataset.items[index]
        return {"index": index, "image": read_file_bytes(item.image), "depth": encode_sparse(sample.depth),
                "name": item.name, "path": item.image.relative_to(self.root).as_posix()}


def kitti_splits(root: Path, names: Sequence[str] | None, lists: dict[str, str | None] | None = None,
                 ground_truth: str = "annotated", annotated_dir: str = "data_depth_annotated",
                 skip_missing_gt: bool = False):
    """KITTI raw data with split lists (``KittiDepthDataModule``'s: monodepth2 or BTS lines; a relative list is
    taken as given when it exists, else under ``root``), one split per list given; the ground truth of the
    ``ground_truth`` source is stored with each frame, so evaluation needs nothing else."""
    from .kitti import KittiDepthDataset

    lists = {split: name for split, name in (lists or {}).items() if name}
    names = names or list(lists)
    if not names:
        raise DataError("kitti: no split list given (--train-list, --val-list, --test-list: e.g. monodepth2's "
                        "splits/eigen_zhou/train_files.txt and splits/eigen/test_files.txt)")
    splits = {}
    for name in names:
        if name not in lists:
            raise DataError(f"--split {name}: no --{name}-list given")
        path = Path(lists[name])
        path = path if path.is_absolute() or path.is_file() else root / path
        dataset = KittiDepthDataset(root, path, ground_truth=ground_truth, annotated_dir=annotated_dir,
                                    skip_missing_gt=skip_missing_gt)
        splits[name] = (len(dataset), KittiRecords(dataset, root))
    return splits, {"format": "kitti", "ground_truth": ground_truth, "class_names": None,
                    "split_meta": {name: {"list": Path(lists[name]).name} for name in names}}


class DetectionRecords:
    """Records ``{"index", "image": file bytes, "record": the DetectionRecord as JSON}`` (the annotations in
    original pixel coordinates, the image path relative to the source root)."""

    def __init__(self, records: Sequence[DetectionRecord], root: Path):
        self.records, self.root = list(records), root

    def __call__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        relative = Path(record.path).resolve().relative_to(self.root.resolve()).as_posix()
        return {"index": index, "image": read_file_bytes(record.path),
                "record": detection_record_json(record, relative)}


def coco_splits(root: Path, names: Sequence[str] | None, annotation_file: str = "annotations/instances_{split}.json",
                image_dir: str = "{split}"):
    """COCO JSON (``CocoDetectionDataModule``'s layout): labels indexed by the training split's categories."""
    def read(split, category_ids):
        return read_coco(root / annotation_file.replace("{split}", split), root / image_dir.replace("{split}", split),
                         category_ids)

    names = names or [n for n in ("train", "val", "test") if (root / annotation_file.replace("{split}", n)).is_file()]
    _, category_ids, class_names = read(names[0] if "train" not in names else "train", None)
    splits = {}
    for name in names:
        records = read(name, category_ids)[0]
        splits[name] = (len(records), DetectionRecords(records, root))
    return splits, {"format": "coco", "class_names": class_names, "category_ids": category_ids}


def voc_splits(root: Path, names: Sequence[str] | None):
    """Pascal VOC (``VOCdevkit/VOC2007``'s layout) with the 20 VOC classes; splits are ImageSets/Main lists."""
    names = names or [n for n in ("trainval", "test") if (root / "ImageSets" / "Main" / f"{n}.txt").is_file()]
    splits = {}
    for name in names:
        records = read_voc(root, name, VOC_CLASSES)
        splits[name] = (len(records), DetectionRecords(records, root))
    return splits, {"format": "voc", "class_names": list(VOC_CLASSES),
                    "category_ids": list(range(1, len(VOC_CLASSES) + 1))}


def video_splits_of(root: Path, names: Sequence[str] | None, list_format: str = "auto", split: int = 1):
    """Videos with UCF101 lists (or Kinetics CSVs, or the per-class folder split: ``video_splits``) as
    ``VideoDataModule`` reads them. The encoded files are stored, not decoded clips: a UCF101 video is ~0.5 MB
    encoded and ~60 MB as decoded 128x171 frames, and the clips a recipe samples (random, uniform, 3-crop) are
    cut after reading. A split whose list equals an earlier one (UCF101's val, its test list) is stored once."""
    class_names, lists = video_splits(root, list_format=list_format, split=split)
    names = names or [n for n in ("train", "val", "test") if lists.get(n)]
    splits, samples, stored = {}, {}, {}
    for name in names:
        pairs = [(Path(path).resolve().relative_to(root.resolve()).as_posix(), int(label), path)
                 for path, label in lists[name]]
        frame_dirs = [path for _, _, path in pairs if Path(path).is_dir()]
        if frame_dirs:
            raise DataError(f"{frame_dirs[0]}: frame-folder videos are not converted (encode them to video files "
                            f"first, e.g. ffmpeg -i {frame_dirs[0]}/img_%05d.jpg {frame_dirs[0]}.mp4)")
        key = tuple((p, l) for p, l, _ in pairs)
        samples[name] = {"samples": [list(pair) for pair in key]}
        splits[name] = (len(pairs), stored[key] if key in stored else VideoRecords(pairs))
        stored.setdefault(key, name)
    return splits, {"format": "video", "class_names": class_names, "split_meta": samples}


class VideoRecords:
    """Records ``{"index", "video": the encoded file's bytes, "label", "path"}``."""

    def __init__(self, samples: Sequence[tuple[str, int, str]]):
        self.samples = list(samples)

    def __call__(self, index: int) -> dict[str, Any]:
        name, label, path = self.samples[index]
        return {"index": index, "video": read_file_bytes(path), "label": label, "path": name}


FORMATS: dict[str, Callable[..., tuple[dict, dict]]] = {
    "image_folder": image_folder_splits,
    "dense": dense_splits,
    "nyu": nyu_splits,
    "kitti": kitti_splits,
    "coco": coco_splits,
    "voc": voc_splits,
    "video": video_splits_of,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m densecnn.data.convert FORMAT ROOT OUT_DIR``: convert a folder dataset to LitData streaming
    chunks (see the module docstring for the formats and options).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m densecnn.data.convert", description=__doc__.split("::")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS))
    parser.add_argument("root", type=Path, help="the folder dataset")
    parser.add_argument("out_dir", type=Path, help="where the streaming dataset goes (a local folder)")
    parser.add_argument("--split", nargs="+", default=None, help="splits to convert (default: all found)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--chunk-bytes", default="64MB", help="LitData chunk size (default 64MB)")
    parser.add_argument("--overwrite", action="store_true", help="redo splits a previous run finished")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--maps", nargs="+", choices=sorted(MAP_FOLDERS), help="dense, nyu: maps to store "
                        "(default: dense, those of the training split; nyu, all three)")
    parser.add_argument("--depth-scale", type=float, default=1000.0, help="dense: depth PNG value / scale = "
                        "metres (1000, the default: millimetres; 256: KITTI)")
    parser.add_argument("--classes", choices=("13", "40", "894"), default="40", help="nyu: the label set stored "
                        "(13 and 40 need --mapping-file)")
    parser.add_argument("--mapping-file", default=None, help="nyu: Gupta et al.'s classMapping40.mat (relative: "
                        "under root)")
    parser.add_argument("--depth-key", choices=("depths", "rawDepths"), default="depths", help="nyu: in-painted "
                        "(default) or raw depth")
    parser.add_argument("--mat-file", default="nyu_depth_v2_labeled.mat", help="nyu: the labeled file (relative: "
                        "under root)")
    parser.add_argument("--splits-file", default="splits.mat", help="nyu: the official split (relative: under root)")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}-list", default=None, help=f"kitti: the {split} split list")
    parser.add_argument("--ground-truth", choices=("annotated", "velodyne"), default="annotated",
                        help="kitti: the depth benchmark's annotated maps (default) or projected Velodyne scans")
    parser.add_argument("--annotated-dir", default="data_depth_annotated", help="kitti: the annotated maps' folder")
    parser.add_argument("--skip-missing-gt", action="store_true", help="kitti: leave out listed frames without "
                        "ground truth (counted in a warning) instead of stopping")
    parser.add_argument("--list-format", default="auto", help="video: auto, ucf101, kinetics or folder "
                        "(densecnn.data.video_lists)")
    parser.add_argument("--ucf-split", type=int, default=1, help="video: UCF101 split 1, 2 or 3")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise DataError(f"root: {args.root} is not a folder")
    parser_options = {"dense": {"maps": args.maps, "depth_scale": args.depth_scale},
                      "nyu": {"maps": args.maps, "classes": args.classes, "mapping_file": args.mapping_file,
                              "depth_key": args.depth_key, "mat_file": args.mat_file,
                              "splits_file": args.splits_file},
                      "kitti": {"lists": {"train": args.train_list, "val": args.val_list, "test": args.test_list},
                                "ground_truth": args.ground_truth, "annotated_dir": args.annotated_dir,
                                "skip_missing_gt": args.skip_missing_gt},
                      "video": {"list_format": args.list_format, "split": args.ucf_split}}
    options = parser_options.get(args.format, {})
    splits, meta = FORMATS[args.format](args.root, args.split, **options)
    out = convert(splits, meta, args.out_dir, chunk_bytes=args.chunk_bytes, num_workers=args.num_workers,
                  overwrite=args.overwrite, verbose=not args.quiet)
    print(f"{out}: {', '.join(f'{s} {n}' for s, (n, _) in splits.items())} samples ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
