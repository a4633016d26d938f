"""densecnn's Lightning layer: task modules, DataModules, callbacks and the CLI."""
from .base import BaseTask, CheckpointError
from .callbacks import FreezeBackbone, MetricsJSONWriter, PredictionWriter
from .classification import ClassificationTask
from .datamodules import BaseDataModule, ImageFolderDataModule

__all__ = ["BaseDataModule", "BaseTask", "CheckpointError", "ClassificationTask", "FreezeBackbone",
           "ImageFolderDataModule", "MetricsJSONWriter", "PredictionWriter"]
from .dense import DensePredictionTask  # noqa: E402
from .datamodules.dense import DenseDataModule, KittiDepthDataModule, NYUDepthV2DataModule  # noqa: E402
__all__ += ["DenseDataModule", "DensePredictionTask", "KittiDepthDataModule", "NYUDepthV2DataModule"]
from .detection import DetectionTask, FastRCNNTask, FasterRCNNTask, OverFeatTask, RCNNTask  # noqa: E402
from .datamodules.detection import CocoDetectionDataModule, VOCDetectionDataModule  # noqa: E402
__all__ += ["CocoDetectionDataModule", "DetectionTask", "FastRCNNTask", "FasterRCNNTask", "OverFeatTask", "RCNNTask",
            "VOCDetectionDataModule"]
from .video import VideoClassificationTask  # noqa: E402
from .datamodules.video import VideoFolderDataModule  # noqa: E402
__all__ += ["VideoClassificationTask", "VideoFolderDataModule"]
