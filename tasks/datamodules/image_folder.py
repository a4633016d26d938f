"""ImageFolder classification data: ``root/{train,val,test}/<class>/*`` (test falls back to val)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from densecnn.data import IMAGE_SUFFIXES, DataError, ImageFolderDataset, build_pipeline
from densecnn.data.image_folder import find_classes
from densecnn.data.streaming import StreamingImageFolder
from densecnn.data.synthetic import has_files, write_classification_dataset
from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .base import BaseDataModule


class ImageFileList(Dataset):
    """Unlabelled images (a flat folder) for ``predict``."""

    def __init__(self, folder: Path, transform):
        self.paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DataError(f"{folder}: no images to predict on")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from densecnn.data import read_rgb

        return {"image": self.transform(image=read_rgb(self.paths[index]))["image"], "label": -1,
                "path": self.paths[index]}


class ImageFolderDataModule(BaseDataModule):
    """ImageFolder classification data (``root/{train,val,test}/<class>/*``) with albumentations presets from the
    papers (AlexNet, VGG/ResNet, the CIFAR recipe) or a YAML list, and the embedded synthetic shapes dataset.
    """
    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        num_workers: int = 0,
        image_size: int = 224,
        train_transforms: str | list[dict[str, Any]] = "resnet",
        eval_transforms: str | list[dict[str, Any]] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        skip_corrupt: bool = False,
        synthetic: bool = False,
        synthetic_image_size: int = 32,
        predict_root: str | None = None,
        pin_memory: bool = False,
        drop_last: bool | None = None,
        streaming: bool = False,
        streaming_cache_dir: str | None = None,
    ):
        """
        Args:
            root: folder with ``train/``, ``val/`` and optionally ``test/``, each ``<class>/<images>``.
            image_size: the network's input size (crop size of the presets).
            train_transforms, eval_transforms: a preset (``alexnet``, ``vgg``, ``resnet``, ``small``,
                ``none``) or a list of albumentations transforms (see ``densecnn.data.transforms``); the eval
                pipeline defaults to the train preset's evaluation form (or ``none`` for a custom list).
            skip_corrupt: drop unreadable images with a warning instead of failing on them.
            synthetic: when ``root`` holds no images, first write the embedded synthetic dataset there.
            predict_root: images to ``predict`` on (a flat folder or class folders); defaults to the test split.
            streaming: ``root`` is ``python -m densecnn.data.convert image_folder`` output (local or
                ``s3://``/``gs://``); the same transforms and batches as the folder it was converted from.
        """
        super().__init__(root, batch_size, num_workers, pin_memory, drop_last=drop_last, streaming=streaming,
                         streaming_cache_dir=streaming_cache_dir)
        self.save_hyperparameters()
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.skip_corrupt = skip_corrupt
        self.synthetic = synthetic
        eval_spec = eval_transforms if eval_transforms is not None else (
            train_transforms if isinstance(train_transforms, str) else "none")
        self.train_transform = build_pipeline(train_transforms, image_size=image_size, train=True, mean=mean,
                                              std=std, where="data.init_args.train_transforms")
        self.eval_transform = build_pipeline(eval_spec, image_size=image_size, train=False, mean=mean, std=std,
                                             where="data.init_args.eval_transforms")
        self.predict_root = Path(predict_root) if predict_root else None
        self.class_names: list[str] = []

    def prepare_data(self) -> None:
        if self.synthetic and not self.streaming and not has_files(self.root, IMAGE_SUFFIXES):
            write_classification_dataset(self.root, image_size=self.hparams.synthetic_image_size)

    def _split(self, name: str, transform) -> ImageFolderDataset | StreamingImageFolder:
        if self.streaming:
            return StreamingImageFolder(self.stream_records(name), self.class_names, transform)
        return ImageFolderDataset(self.root / name, self.class_names, transform, skip_corrupt=self.skip_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predict_root is not None:
            self._setup_predict_root()
            return
        self.check_root(" (set data.init_args.synthetic: true to generate the embedded synthetic data there)")
        self.class_names = (self.stream_meta("image_folder")["class_names"] if self.streaming
                            else find_classes(self.root / "train"))
        if stage in ("fit", None):
            self.train_set = self._split("train", self.train_transform)
        if stage in ("fit", "validate", None):
            self.val_set = self._split("val", self.eval_transform)
        has_test = ("test" in self.stream_meta("image_folder")["splits"] if self.streaming
                    else (self.root / "test").is_dir())
        test_name = "test" if has_test else "val"
        if stage in ("test", None):
            self.test_set = self._split(test_name, self.eval_transform)
        if stage == "predict":
            self.predict_set = self._split(test_name, self.eval_transform)

    def _setup_predict_root(self) -> None:
        if not self.predict_root.is_dir():
            raise DataError(f"data.init_args.predict_root: {self.predict_root} does not exist")
        if any(p.is_dir() for p in self.predict_root.iterdir()):
            self.predict_set = ImageFolderDataset(self.predict_root, None, self.eval_transform, self.skip_corrupt)
        else:
            self.predict_set = ImageFileList(self.predict_root, self.eval_transform)
