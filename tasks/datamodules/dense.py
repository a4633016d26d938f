"""Dense-prediction data: the per-sample folder format (``DenseDataModule``, with the embedded synthetic rooms)
and the labeled NYU Depth v2 file (``NYUDepthV2DataModule``)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from densecnn.data import IMAGE_SUFFIXES, DataError, read_rgb
from densecnn.data.dense import DenseAugment, DenseFolderDataset, DenseSample, read_class_names, sample_to_tensors
from densecnn.data.streaming import StreamingDenseFolder
from densecnn.data.synthetic import has_files
from densecnn.data.synthetic.dense import write_dense_dataset
from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .base import BaseDataModule


class DenseImageList(Dataset):
    """RGB images of a flat folder, for ``predict`` (no ground truth)."""

    def __init__(self, folder: Path, transform: DenseAugment, mean, std):
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataError(f"{folder}: no images to predict on")
        self.transform, self.mean, self.std = transform, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        sample = self.transform(DenseSample(read_rgb(self.paths[index])))
        out = sample_to_tensors(sample, self.mean, self.std)
        out["name"], out["path"] = self.paths[index].stem, str(self.paths[index])
        return out


class DenseSplitsMixin:
    """What the dense DataModules share in ``setup``: ``predict_root`` (any folder of images) and the splits
    each stage needs, built by the DataModule's ``make_dataset(split, train)``."""

    def setup_predict_folder(self, stage: str | None) -> bool:
        """For ``predict`` with a ``predict_root``: its images as the predict set; True when that was done."""
        if stage != "predict" or self.predict_root is None:
            return False
        if not self.predict_root.is_dir():
            raise DataError(f"data.init_args.predict_root: {self.predict_root} does not exist")
        self.predict_set = DenseImageList(self.predict_root, self.eval_transform, self.mean, self.std)
        return True

    def assign_splits(self, stage: str | None, train: str, val: str, test: str) -> None:
        """The datasets ``stage`` needs; predict without ``predict_root`` reads the test split."""
        if stage in ("fit", None):
            self.train_set = self.make_dataset(train, True)
        if stage in ("fit", "validate", None):
            self.val_set = self.make_dataset(val, False)
        if stage in ("test", None):
            self.test_set = self.make_dataset(test, False)
        if stage == "predict":
            self.predict_set = self.make_dataset(test, False)


class DenseDataModule(DenseSplitsMixin, BaseDataModule):
    """Dense data in folders (``root/<split>/{rgb,depth,normals,labels}/<name>.png``) for Eigen & Fergus' tasks:
    aligned augmentation of image and maps, normals from depth when absent, optional ``synthetic`` rooms.
    """
    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 0,
        maps: list[Literal["depth", "normals", "semantic"]] | None = None,
        num_classes: int | None = None,
        image_size: tuple[int, int] = (240, 320),
        crop_size: tuple[int, int] | None = None,
        scale: tuple[float, float] = (1.0, 1.5),
        rotation: float = 5.0,
        flip_p: float = 0.5,
        colour: tuple[float, float] = (0.8, 1.2),
        brightness: float = 0.0,
        contrast: float = 0.0,
        eval_crop: bool = False,
        normals_from_depth: bool = True,
        depth_scale: float = 1000.0,
        cache_normals: bool = True,
        normals_cache_dir: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        synthetic: bool = False,
        synthetic_size: tuple[int, int] = (72, 96),
        synthetic_splits: dict[str, int] | None = None,
        predict_root: str | None = None,
        pin_memory: bool = False,
        drop_last: bool | None = None,
        streaming: bool = False,
        streaming_cache_dir: str | None = None,
    ):
        """
        Args:
            root: folder with ``train/``, ``val/`` and optionally ``test/`` (falls back to val), each holding
                ``rgb/`` and the map folders ``depth/``, ``normals/``, ``labels/`` (see ``densecnn.data.dense``).
            maps: maps to load (default: every map folder of the training split). Normals missing on disk are
                computed from depth when ``normals_from_depth`` (intrinsics from ``root/camera.json``, else NYU's).
            depth_scale: depth PNG value / ``depth_scale`` = metres: 1000 for millimetres (NYU, the default),
                256 for KITTI's depth benchmark PNGs.
            cache_normals, normals_cache_dir: compute normals from depth once per sample and keep them on disk
                (default ``<root>/<split>/.normals_cache``); the plane fits cost ~1.7 s per 640x480 frame.
            num_classes: labels must lie below it (or be 255); checked per sample.
            image_size: (height, width) every image and map is resized to first (maps by nearest neighbour).
            crop_size: (height, width) of the random training crop (default ``image_size``); evaluation uses
                the whole ``image_size`` frame, or its centre ``crop_size`` with ``eval_crop``.
            scale, rotation, flip_p, colour, brightness, contrast: the joint augmentation (``DenseAugment``):
                zoom by s in ``scale`` with depth divided by s, rotation in +-``rotation`` degrees, horizontal
                flip negating normals' x, and colour on the image only.
            synthetic: when ``root`` holds no images, first write the embedded synthetic rooms there
                (``synthetic_size`` (height, width), ``synthetic_splits`` images per split).
            predict_root: images to ``predict`` on (any folder of images); defaults to the test split.
            streaming: ``root`` is ``python -m densecnn.data.convert dense`` output (local or ``s3://``/``gs://``);
                the same joint transforms and batches as the folder it was converted from.
        """
        super().__init__(root, batch_size, num_workers, pin_memory, drop_last=drop_last, streaming=streaming,
                         streaming_cache_dir=streaming_cache_dir)
        self.save_hyperparameters()
        self.maps = list(maps) if maps is not None else None
        self.num_classes = num_classes
        self.mean, self.std = tuple(mean), tuple(std)
        augment = dict(scale=scale, rotation=rotation, flip_p=flip_p, colour=colour, brightness=brightness,
                       contrast=contrast)
        self.train_transform = DenseAugment(image_size, crop_size, train=True, **augment)
        self.eval_transform = DenseAugment(image_size, crop_size, train=False, eval_crop=eval_crop)
        self.normals_from_depth = normals_from_depth
        self.depth_scale, self.cache_normals = depth_scale, cache_normals
        self.normals_cache_dir = normals_cache_dir
        self.predict_root = Path(predict_root) if predict_root else None
        self.class_names: list[str] | None = None

    def prepare_data(self) -> None:
        if self.hparams.synthetic and not self.streaming and not has_files(self.root, (".png",)):
            height, width = self.hparams.synthetic_size
            write_dense_dataset(self.root, height=height, width=width, splits=self.hparams.synthetic_splits)

    def make_dataset(self, split: str, train: bool) -> Dataset:
        if self.streaming:
            stored = self.stream_meta("dense")["maps"]
            missing = sorted(set(self.maps or stored) - set(stored))
            if missing:
                raise DataError(f"data.init_args.maps: {missing} not in the converted dataset {self.stream_root} "
                                f"(it holds {stored}; convert again with --maps)")
            return StreamingDenseFolder(self.stream_records(split), self.maps or stored,
                                        self.train_transform if train else self.eval_transform,
                                        num_classes=self.num_classes, mean=self.mean, std=self.std)
        return DenseFolderDataset(self.root / split, self.maps, self.train_transform if train else self.eval_transform,
                                  num_classes=self.num_classes, normals_from_depth=self.normals_from_depth,
                                  mean=self.mean, std=self.std, depth_scale=self.depth_scale,
                                  cache_normals=self.cache_normals, normals_cache_dir=self.normals_cache_dir)

    def _test_split(self) -> str:
        if self.streaming:
            return "test" if "test" in self.stream_meta("dense")["splits"] else "val"
        return "test" if (self.root / "test").is_dir() else "val"

    def setup(self, stage: str | None = None) -> None:
        if self.setup_predict_folder(stage):
            return
        self.check_root(" (set data.init_args.synthetic: true to generate the embedded synthetic rooms there)")
        self.class_names = self.stream_meta("dense")["class_names"] if self.streaming else read_class_names(self.root)
        if self.maps is None:  # fix the maps once, from the training split, so every split yields the same keys
            self.maps = list(self.make_dataset("train", False).maps)
        self.assign_splits(stage, "train", "val", self._test_split())


class NYUDepthV2DataModule(DenseDataModule):
    """The labeled NYU Depth v2 file with the official 795/654 split (the test frames also serve as the
    validation set: the labeled subset has no separate one)."""

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 0,
        mat_file: str = "nyu_depth_v2_labeled.mat",
        splits_file: str = "splits.mat",
        mapping_file: str | None = None,
        classes: Literal["13", "40", "894"] = "40",
        maps: list[Literal["depth", "normals", "semantic"]] | None = None,
        depth_key: Literal["depths", "rawDepths"] = "depths",
        image_size: tuple[int, int] = (240, 320),
        crop_size: tuple[int, int] | None = (228, 304),
        scale: tuple[float, float] = (1.0, 1.5),
        rotation: float = 5.0,
        flip_p: float = 0.5,
        colour: tuple[float, float] = (0.8, 1.2),
        brightness: float = 0.0,
        contrast: float = 0.0,
        eval_crop: bool = False,
        eval_protocol: Literal["eigen", "resized"] = "eigen",
        cache_normals: bool = True,
        normals_cache_dir: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        predict_root: str | None = None,
        pin_memory: bool = False,
        drop_last: bool | None = None,
        download: bool = False,
        streaming: bool = False,
        streaming_cache_dir: str | None = None,
    ):
        """
        Args:
            root: folder holding ``mat_file``, ``splits_file`` and ``mapping_file`` (relative names are
                looked up there; absolute paths are used as they are).
            download: fetch whichever of the three official files is missing from where it is published
                (``densecnn.data.nyu.NYU_URLS``; about 2.8 GB for the labeled file), once, before setup.
            mapping_file: Gupta et al.'s ``classMapping40.mat`` (894 -> 40), needed for ``classes`` 13 and 40.
            classes: ``13``, ``40`` or ``894`` label sets.
            maps: targets to load (default depth, normals, semantic; normals come from least-squares plane
                fits to the depth, as in Silberman et al.).
            depth_key: ``depths`` (in-painted) or ``rawDepths`` (with holes, as the paper trains on).
            image_size, crop_size, ...: as ``DenseDataModule`` (Eigen: 320x240 frames, 304x228 crops).
            eval_protocol: how validation/test depth is scored. ``eigen`` (default), the standard protocol
                (Eigen et al. 2014, as BTS and monodepth2 evaluate): the batches carry the full-resolution
                480x640 ground truth (``depth_full``), the prediction is upsampled bilinearly to it and scored
                inside the Eigen crop (rows 45:471, columns 41:601) with depth capped to [1e-3, 10] m.
                ``resized``: scored against the ground truth resized with the image (nearest neighbour) to
                ``image_size``, the crop scaled to it. With ``eval_crop`` the network sees the centre crop
                only, and the frame pixels outside it are not scored (``depth_window`` says which are).
            cache_normals, normals_cache_dir: keep the normals computed from depth on disk (default
                ``<root>/.normals_cache``), computed once per frame.
            streaming: ``root`` is ``python -m densecnn.data.convert nyu`` output (local or ``s3://``/``gs://``):
                the ``.mat`` path's batches and evaluation (``depth_full``, ``depth_window``) for the same seed;
                ``classes``, ``depth_key`` and the maps must be those it was converted with.
        """
        if eval_protocol not in ("eigen", "resized"):
            raise DataError(f"data.init_args.eval_protocol: {eval_protocol!r} is not one of eigen, resized")
        super().__init__(root, batch_size, num_workers, maps=maps or ["depth", "normals", "semantic"],
                         num_classes=int(classes), image_size=image_size, crop_size=crop_size, scale=scale,
                         rotation=rotation, flip_p=flip_p, colour=colour, brightness=brightness, contrast=contrast,
                         eval_crop=eval_crop, mean=mean, std=std, predict_root=predict_root, pin_memory=pin_memory,
                         drop_last=drop_last, cache_normals=cache_normals, normals_cache_dir=normals_cache_dir,
                         streaming=streaming, streaming_cache_dir=streaming_cache_dir)
        self.save_hyperparameters()

    def _path(self, name: str | None) -> Path | None:
        return None if name is None else (Path(name) if Path(name).is_absolute() else self.root / name)

    def prepare_data(self) -> None:
        """With ``download``, fetch the missing official files (Lightning runs this on one process per node)."""
        if not self.hparams.download or self.streaming:
            return
        from densecnn.data.nyu import download_nyu_files

        h = self.hparams
        needed = [h.mat_file, h.splits_file] + ([h.mapping_file] if h.mapping_file and h.classes != "894" else [])
        download_nyu_files([self._path(name) for name in needed])

    def make_dataset(self, split: str, train: bool) -> Dataset:
        from densecnn.data.nyu import NYUDepthV2Dataset

        h = self.hparams
        if self.streaming:
            return self.make_streamed_dataset(split, train)
        dataset = NYUDepthV2Dataset(self._path(h.mat_file), "train" if split == "train" else "test",
                                    splits_file=self._path(h.splits_file), classes=h.classes,
                                    mapping_file=self._path(h.mapping_file), maps=self.maps, depth_key=h.depth_key,
                                    transform=self.train_transform if train else self.eval_transform,
                                    mean=self.mean, std=self.std, cache_normals=h.cache_normals,
                                    normals_cache_dir=self._path(h.normals_cache_dir or ".normals_cache"),
                                    full_depth=not train and h.eval_protocol == "eigen" and "depth" in self.maps)
        if dataset.class_names is not None:
            self.class_names = list(dataset.class_names)
        return dataset

    def make_streamed_dataset(self, split: str, train: bool) -> Dataset:
        """A converted ``nyu`` split, checked to hold the label set, depth and maps asked for."""
        from densecnn.data.streaming import StreamingNYU

        h, meta = self.hparams, self.stream_meta("nyu")
        for key, value in (("classes", str(h.classes)), ("depth_key", h.depth_key)):
            if meta[key] != value:
                raise DataError(f"data.init_args.{key}: {value!r}, but {self.stream_root} was converted with "
                                f"{meta[key]!r} (set it to that, or convert again with --{key.replace('_', '-')} "
                                f"{value})")
        missing = sorted(set(self.maps) - set(meta["maps"]))
        if missing:
            raise DataError(f"data.init_args.maps: {missing} not in the converted dataset {self.stream_root} "
                            f"(it holds {meta['maps']}; convert again with --maps)")
        if meta["class_names"] is not None and "semantic" in self.maps:
            self.class_names = list(meta["class_names"])
        return StreamingNYU(self.stream_records("train" if split == "train" else "test"), self.maps,
                            self.train_transform if train else self.eval_transform, num_classes=int(h.classes),
                            class_names=meta["class_names"], mean=self.mean, std=self.std,
                            full_depth=not train and h.eval_protocol == "eigen" and "depth" in self.maps)

    def setup(self, stage: str | None = None) -> None:
        if self.setup_predict_folder(stage):
            return
        self.check_root()
        self.assign_splits(stage, "train", "test", "test")


class KittiDepthDataModule(DenseSplitsMixin, BaseDataModule):
    """KITTI depth from the raw recordings with split lists (Eigen's split in monodepth2's or BTS's format) and
    ground truth from the depth benchmark's annotated maps or projected Velodyne scans
    (``densecnn.data.kitti``). Evaluation batches carry the full-resolution ground truth and the protocol
    (crop, cap), which ``DensePredictionTask`` scores by."""

    def __init__(
        self,
        root: str,
        batch_size: int = 4,
        num_workers: int = 0,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        ground_truth: Literal["annotated", "velodyne"] = "annotated",
        annotated_dir: str = "data_depth_annotated",
        skip_missing_gt: bool = False,
        kb_crop: tuple[int, int] | None = (352, 1216),
        image_size: tuple[int, int] | None = None,
        crop_size: tuple[int, int] | None = (352, 704),
        scale: tuple[float, float] = (1.0, 1.0),
        rotation: float = 1.0,
        flip_p: float = 0.5,
        colour: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.1,
        contrast: float = 0.0,
        eval_crop: Literal["kitti_garg", "kitti_eigen", "none"] = "kitti_garg",
        max_depth: float = 80.0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        predict_root: str | None = None,
        pin_memory: bool = False,
        drop_last: bool | None = None,
        streaming: bool = False,
        streaming_cache_dir: str | None = None,
    ):
        """
        Args:
            root: the raw data's root: ``<date>/<drive>/image_02/data/*.png``, the date folders' calibration
                files, ``velodyne_points/`` and ``annotated_dir`` (see ``densecnn.data.kitti``).
            train_list, val_list, test_list: split lists (monodepth2 ``<date>/<drive> <frame> <l|r>`` or BTS
                ``<image> <depth|None> <focal>`` lines), e.g. monodepth2's ``splits/eigen_zhou/train_files.txt``
                and ``splits/eigen/test_files.txt``; a relative path is taken as given when it exists, else
                under ``root``. ``val_list`` defaults to ``test_list``.
            ground_truth: ``annotated`` (the benchmark's uint16 maps, value / 256 m) or ``velodyne`` (each
                frame's scan projected into the camera, Eigen et al. 2014).
            skip_missing_gt: leave out (count and warn about) listed frames without ground truth instead of
                stopping at the first: the annotated maps cover 652 of the 697 Eigen test frames.
            kb_crop: BTS's bottom-centre crop (height, width) taken from every frame first, 352x1216 (the
                window all KITTI frame sizes share); None: no crop (then ``image_size`` is needed, as frames
                differ in size).
            image_size: (height, width) the cropped frame is resized to (None: keep it); depth by nearest
                neighbour, so sparse ground truth keeps its values.
            crop_size: the random training crop (BTS: 352x704); None: the whole (cropped, resized) frame.
            scale, rotation, flip_p, colour, brightness, contrast: the joint training augmentation
                (``DenseAugment``); the defaults follow BTS for KITTI: no zoom, +-1 degree, flip, colour and
                brightness in 0.9-1.1.
            eval_crop, max_depth: the evaluation protocol the batches carry: the Garg crop (default) or the
                Eigen crop of the full-resolution ground truth, depths capped to [1e-3, ``max_depth``] (80 m, or
                50 m); the prediction at the network's input is upsampled bilinearly to the ground truth's
                resolution inside the part of the frame it covers.
            predict_root: images to ``predict`` on (any folder); defaults to the test list.
            streaming: ``root`` is ``python -m densecnn.data.convert kitti`` output (local or ``s3://``/``gs://``),
                one split per converted list (the ``*_list`` options are then not read; val falls back to test);
                ``ground_truth`` must be the converted one. The raw path's batches for the same seed.
        """
        super().__init__(root, batch_size, num_workers, pin_memory, drop_last=drop_last, streaming=streaming,
                         streaming_cache_dir=streaming_cache_dir)
        from densecnn.data.kitti import KittiTransform, collate_kitti

        self.save_hyperparameters()
        if kb_crop is None and image_size is None:
            raise DataError("data.init_args: kb_crop and image_size are both null; KITTI frames differ in size "
                            "(370x1224 to 376x1242), so batches need one of them")
        if eval_crop not in ("kitti_garg", "kitti_eigen", "none"):
            raise DataError(f"data.init_args.eval_crop: {eval_crop!r} is not one of kitti_garg, kitti_eigen, none")
        size = tuple(image_size) if image_size is not None else tuple(kb_crop)
        augment = dict(scale=scale, rotation=rotation, flip_p=flip_p, colour=colour, brightness=brightness,
                       contrast=contrast)
        self.train_transform = KittiTransform(DenseAugment(size, crop_size, train=True, **augment), kb_crop)
        self.eval_transform = KittiTransform(DenseAugment(size, None, train=False), kb_crop)
        self.collate_fn = collate_kitti
        self.mean, self.std = tuple(mean), tuple(std)
        self.predict_root = Path(predict_root) if predict_root else None
        self.class_names: list[str] | None = None

    def _list(self, key: str) -> Path:
        name = getattr(self.hparams, key) or (self.hparams.test_list if key == "val_list" else None)
        if name is None:
            raise DataError(f"data.init_args.{key} is not set (a split list such as monodepth2's "
                            f"splits/eigen/test_files.txt)")
        path = Path(name)
        if path.is_absolute() or path.is_file():
            return path
        return self.root / path

    def make_dataset(self, key: str, train: bool) -> Dataset:
        from densecnn.data.kitti import KittiDepthDataset

        h = self.hparams
        if self.streaming:
            return self.make_streamed_dataset(key, train)
        return KittiDepthDataset(self.root, self._list(key), ground_truth=h.ground_truth, annotated_dir=h.annotated_dir,
                                 skip_missing_gt=h.skip_missing_gt,
                                 transform=self.train_transform if train else self.eval_transform,
                                 full_depth=not train, eval_crop=h.eval_crop, max_depth=h.max_depth,
                                 mean=self.mean, std=self.std)

    def make_streamed_dataset(self, key: str, train: bool) -> Dataset:
        """The converted split of list ``key`` (``val_list`` falls back to the test split, as to ``test_list``)."""
        from densecnn.data.streaming import StreamingKitti

        h, meta = self.hparams, self.stream_meta("kitti")
        if meta["ground_truth"] != h.ground_truth:
            raise DataError(f"data.init_args.ground_truth: {h.ground_truth!r}, but {self.stream_root} was converted "
                            f"with {meta['ground_truth']!r} (set it to that, or convert again with --ground-truth "
                            f"{h.ground_truth})")
        split = key.removesuffix("_list")
        if split == "val" and "val" not in meta["splits"]:
            split = "test"
        return StreamingKitti(self.stream_records(split), self.train_transform if train else self.eval_transform,
                              full_depth=not train, eval_crop=h.eval_crop, max_depth=h.max_depth, mean=self.mean,
                              std=self.std)

    def setup(self, stage: str | None = None) -> None:
        if self.setup_predict_folder(stage):
            return
        self.check_root()
        self.assign_splits(stage, "train_list", "val_list", "test_list")
