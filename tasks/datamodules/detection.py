"""Detection DataModules: COCO JSON (with the embedded synthetic default) and Pascal VOC.

Both share the bbox-aware albumentations pipelines of ``densecnn.data.detection`` and, for R-CNN and Fast
R-CNN, region proposals: ``proposals: selective_search`` computes them once per split with OpenCV and
caches them in ``<root>/proposals/``; any other value is a proposals file (``{split}`` in the path is
replaced by the split's name; format in ``densecnn.data.detection.load_proposals``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from densecnn.data import DataError, read_rgb
from densecnn.data.detection import (VOC_CLASSES, DetectionDataset, DetectionRecord, build_detection_pipeline,
                                     detection_collate, image_records, load_proposals, read_coco, read_voc,
                                     record_key, save_proposals, selective_search)
from densecnn.data.streaming import StreamingDetection
from densecnn.data.synthetic.common import has_files
from densecnn.data.synthetic.detection import write_detection_dataset
from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .base import BaseDataModule

SELECTIVE_SEARCH = "selective_search"


class DetectionDataModule(BaseDataModule, ABC):
    """What the COCO and VOC DataModules share: pipelines, proposals, loaders. Subclasses implement
    ``read_split(split) -> list[DetectionRecord]`` and set ``class_names`` (and ``category_ids``)."""

    #: how files outside the annotations (proposals, the results JSON) name an image: the COCO image ``id`` or
    #: the image ``name`` (VOC's "000005"); see ``densecnn.data.detection.record_key``
    image_key = "id"
    proposal_key = image_key

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, image_size: int = 512,
                 hflip: float = 0.5, scale_range: tuple[float, float] = (0.75, 1.25), min_visibility: float = 0.3,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 proposals: str | None = None, selective_search_mode: str = "fast", max_proposals: int = 2000,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 predict_root: str | None = None, pin_memory: bool = False, drop_last: bool | None = None,
                 streaming: bool = False, streaming_cache_dir: str | None = None):
        """``streaming``: ``root`` is ``python -m densecnn.data.convert coco|voc`` output (local or ``s3://``/
        ``gs://``), read with the same pipelines and batches as the files it was converted from; split names
        are the converted ones. Region proposals (R-CNN, Fast R-CNN) are not streamed."""
        super().__init__(root, batch_size, num_workers, pin_memory, collate_fn=detection_collate, drop_last=drop_last,
                         streaming=streaming, streaming_cache_dir=streaming_cache_dir)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = build_detection_pipeline(image_size, train=True, mean=mean, std=std, hflip=hflip,
                                                        scale_range=tuple(scale_range),
                                                        min_visibility=min_visibility)
        self.eval_transform = build_detection_pipeline(image_size, train=False, mean=mean, std=std)
        self.proposals = proposals
        self.selective_search_mode = selective_search_mode
        self.max_proposals = max_proposals
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.predict_root = Path(predict_root) if predict_root else None
        self.class_names: list[str] = []
        self.category_ids: list[int] = []

    # ---- subclasses ---------------------------------------------------------------------------------------
    @abstractmethod
    def read_split(self, split: str) -> list[DetectionRecord]:
        """The records of split ``split`` (labels indexed by ``class_names``)."""

    def split_exists(self, split: str) -> bool:
        return True

    # ---- proposals ----------------------------------------------------------------------------------------
    def proposals_path(self, split: str) -> Path:
        if self.proposals == SELECTIVE_SEARCH:
            return self.root / "proposals" / f"selective_search_{self.selective_search_mode}_{split}.json"
        return Path(str(self.proposals).replace("{split}", split))

    def compute_selective_search(self, records: Sequence[DetectionRecord]) -> dict[str, np.ndarray]:
        return {record_key(r, self.proposal_key): selective_search(read_rgb(r.path), self.selective_search_mode,
                                                                   self.max_proposals) for r in records}

    def prepare_proposals(self) -> None:
        """Run selective search over each split once and cache it (rank zero, from ``prepare_data``)."""
        if self.streaming and self.proposals is not None:
            raise DataError("data.init_args.proposals: region proposals are not read from a streaming root; "
                            "use the annotation files (streaming: false) for R-CNN and Fast R-CNN")
        if self.proposals != SELECTIVE_SEARCH:
            return
        for split in dict.fromkeys(self.splits.values()):
            path = self.proposals_path(split)
            if not path.is_file() and self.split_exists(split):
                print(f"selective search ({self.selective_search_mode}) over split {split!r}; caching in {path}")
                save_proposals(self.compute_selective_search(self.read_split(split)), path)

    def _proposals_for(self, split: str, records: Sequence[DetectionRecord]) -> dict[str, np.ndarray] | None:
        if self.proposals is None:
            return None
        if split == "predict":
            return self.compute_selective_search(records) if self.proposals == SELECTIVE_SEARCH else \
                load_proposals(self.proposals_path("predict"))
        path = self.proposals_path(split)
        if self.proposals == SELECTIVE_SEARCH and not path.is_file():
            save_proposals(self.compute_selective_search(records), path)
        return load_proposals(path)

    # ---- datasets -----------------------------------------------------------------------------------------
    def dataset(self, split_name: str, *, train: bool, records: Sequence[DetectionRecord] | None = None,
                stage_split: str | None = None) -> DetectionDataset:
        if self.streaming and records is None:
            return StreamingDetection(self.stream_records(split_name),
                                      self.train_transform if train else self.eval_transform, keep_ignored=not train)
        records = self.read_split(split_name) if records is None else records
        proposals = self._proposals_for(stage_split or split_name, records)
        return DetectionDataset(records, self.train_transform if train else self.eval_transform,
                                keep_ignored=not train, proposals=proposals, proposal_key=self.proposal_key,
                                max_proposals=self.max_proposals)

    def setup(self, stage: str | None = None) -> None:
        self.check_root()
        if self.streaming:
            meta = self.stream_meta("coco", "voc")
            self.class_names, self.category_ids = list(meta["class_names"]), list(meta["category_ids"])
            has_test = self.splits["test"] in meta["splits"]
        else:
            self.read_classes()
            has_test = self.split_exists(self.splits["test"])
        if stage in ("fit", None):
            self.train_set = self.dataset(self.splits["train"], train=True)
        if stage in ("fit", "validate", None):
            self.val_set = self.dataset(self.splits["val"], train=False)
        test_split = self.splits["test"] if has_test else self.splits["val"]
        if stage in ("test", None):
            self.test_set = self.dataset(test_split, train=False)
        if stage == "predict":
            if self.predict_root is not None:
                if not self.predict_root.is_dir():
                    raise DataError(f"data.init_args.predict_root: {self.predict_root} does not exist")
                self.predict_set = self.dataset("predict", train=False, records=image_records(self.predict_root))
            else:
                self.predict_set = self.dataset(test_split, train=False)

    def read_classes(self) -> None:
        """Fill ``class_names`` and ``category_ids`` (from the training split)."""


class CocoDetectionDataModule(DetectionDataModule):
    """COCO-format data: ``root/<annotation_file>`` and images in ``root/<image_dir>`` (``{split}`` in both is
    replaced by the split name). With ``synthetic: true`` and no images under ``root``, the embedded
    synthetic shapes dataset is written there first (``densecnn.data.synthetic.detection``)."""

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, image_size: int = 512,
                 annotation_file: str = "annotations/instances_{split}.json", image_dir: str = "{split}",
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 synthetic: bool = False, synthetic_image_size: int = 128,
                 synthetic_splits: dict[str, int] | None = None, **kwargs: Any):
        """
        Args:
            root: dataset folder (e.g. ``coco`` holding ``annotations/`` and ``train2017/``).
            image_size: the square the images are resized (longest side) and padded to.
            annotation_file, image_dir: paths under ``root``; ``{split}`` becomes ``train_split`` etc.
            train_split, val_split, test_split: split names (``train2017``, ``val2017``); a missing test
                split falls back to the validation split.
            synthetic: write the embedded synthetic dataset when ``root`` holds no images.
            **kwargs: ``DetectionDataModule`` options: ``hflip``, ``scale_range``, ``min_visibility``,
                ``mean``, ``std``, ``proposals`` (``selective_search`` or a file), ``selective_search_mode``,
                ``max_proposals``, ``predict_root``, ``pin_memory``, ``drop_last`` (see ``BaseDataModule``).
        """
        super().__init__(root, batch_size, num_workers, image_size, train_split=train_split, val_split=val_split,
                         test_split=test_split, **kwargs)
        self.save_hyperparameters()
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.synthetic = synthetic
        self.synthetic_image_size = synthetic_image_size
        self.synthetic_splits = synthetic_splits
        self._cache: dict[str, list[DetectionRecord]] = {}

    def prepare_data(self) -> None:
        if self.synthetic and not self.streaming and not has_files(self.root, (".png", ".jpg", ".json")):
            write_detection_dataset(self.root, image_size=self.synthetic_image_size, splits=self.synthetic_splits)
        self.prepare_proposals()

    def _annotation_path(self, split: str) -> Path:
        return self.root / self.annotation_file.replace("{split}", split)

    def split_exists(self, split: str) -> bool:
        return self._annotation_path(split).is_file()

    def read_classes(self) -> None:
        _, self.category_ids, self.class_names = self._read(self.splits["train"], None)

    def _read(self, split: str, category_ids):
        return read_coco(self._annotation_path(split), self.root / self.image_dir.replace("{split}", split),
                         category_ids)

    def read_split(self, split: str) -> list[DetectionRecord]:
        if split not in self._cache:
            if not self.category_ids:
                self.read_classes()
            self._cache[split] = self._read(split, self.category_ids)[0]
        return self._cache[split]

    def check_root(self, hint: str = "") -> None:
        super().check_root(" (set data.init_args.synthetic: true to generate the embedded synthetic data there)")


class VOCDetectionDataModule(DetectionDataModule):
    """Pascal VOC: ``root`` is a ``VOCdevkit/VOC2007``-style folder (``Annotations``, ``JPEGImages``,
    ``ImageSets/Main``). ``extra_train_roots`` adds more such folders to training with the same
    ``train_split``: VOC "07+12" is root VOC2007 plus ``extra_train_roots: [VOCdevkit/VOC2012]`` (S1 L660).
    Difficult objects are left out of training and ignored by evaluation, as in the VOC protocol."""

    image_key = proposal_key = "name"

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, image_size: int = 600,
                 train_split: str = "trainval", val_split: str = "test", test_split: str = "test",
                 class_names: Sequence[str] = VOC_CLASSES, extra_train_roots: Sequence[str] = (),
                 **kwargs: Any):
        """
        Args:
            root: the VOC20xx folder; image_size: the square images are resized and padded to.
            train_split, val_split, test_split: ``ImageSets/Main/<name>.txt`` files.
            class_names: the object classes (the 20 VOC classes by default).
            extra_train_roots: further VOC20xx folders whose ``train_split`` joins the training set.
            **kwargs: ``DetectionDataModule`` options (see ``CocoDetectionDataModule``).
        """
        super().__init__(root, batch_size, num_workers, image_size, train_split=train_split, val_split=val_split,
                         test_split=test_split, **kwargs)
        self.save_hyperparameters()
        self.voc_classes = list(class_names)
        self.extra_train_roots = [Path(r) for r in extra_train_roots]

    def prepare_data(self) -> None:
        self.prepare_proposals()

    def read_classes(self) -> None:
        self.class_names = list(self.voc_classes)
        self.category_ids = list(range(1, len(self.class_names) + 1))

    def split_exists(self, split: str) -> bool:
        return (self.root / "ImageSets" / "Main" / f"{split}.txt").is_file()

    def read_split(self, split: str) -> list[DetectionRecord]:
        records = read_voc(self.root, split, self.voc_classes)
        if split == self.splits["train"] and self.extra_train_roots:
            for extra in self.extra_train_roots:
                offset = len(records)
                for r in read_voc(extra, split, self.voc_classes):
                    r.image_id += offset
                    records.append(r)
        return records
