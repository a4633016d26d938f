from .base import BaseDataModule
from .image_folder import ImageFolderDataModule

__all__ = ["BaseDataModule", "ImageFolderDataModule"]
