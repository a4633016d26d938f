"""Task heads that sit on any backbone's ``forward_features``."""
from .dense import DENSE_TARGETS, INPUT_MAP_CHANNELS, CoarseScale, MultiScaleDenseHead, MultiScaleDenseNet, RefineScale

__all__ = ["DENSE_TARGETS", "INPUT_MAP_CHANNELS", "CoarseScale", "MultiScaleDenseHead", "MultiScaleDenseNet", "RefineScale"]
