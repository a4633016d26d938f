"""torchmetrics Metrics for the papers' evaluation protocols (accumulated per batch, computed once, DDP-synced)."""
from .dense import (DEPTH_KEYS, NORMAL_KEYS, SEMANTIC_KEYS, DepthMetrics, NormalMetrics, SemanticMetrics,
                    angular_error_degrees, depth_errors, eigen_crop_mask)

__all__ = ["DEPTH_KEYS", "NORMAL_KEYS", "SEMANTIC_KEYS", "DepthMetrics", "NormalMetrics", "SemanticMetrics",
           "angular_error_degrees", "depth_errors", "eigen_crop_mask"]
from .detection import COCO_KEYS, VOC_KEYS, DetectionMetrics, VOCMeanAP, coco_map, voc_ap  # noqa: F401
