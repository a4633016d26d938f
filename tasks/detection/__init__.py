"""Detection tasks: OverFeat's sliding windows and the R-CNN family (R-CNN, Fast R-CNN, Faster R-CNN)."""
from .base import DetectionTask
from .fast_rcnn import FastRCNNTask
from .faster_rcnn import FasterRCNNTask
from .overfeat import OverFeatTask
from .proposal_based import ProposalDetectionTask
from .rcnn import RCNNTask

__all__ = ["DetectionTask", "FastRCNNTask", "FasterRCNNTask", "OverFeatTask", "ProposalDetectionTask", "RCNNTask"]
