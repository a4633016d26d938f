from .base import BaseDataModule
from .image_folder import ImageFolderDataModule

__all__ = ["BaseDataModule", "ImageFolderDataModule"]
from .detection import CocoDetectionDataModule, DetectionDataModule, VOCDetectionDataModule  # noqa: F401
from .dense import DenseDataModule, NYUDepthV2DataModule  # noqa: F401
from .video import VideoFolderDataModule  # noqa: F401
