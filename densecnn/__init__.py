"""densecnn: the papers' CNN backbones, heads, losses, metrics and data, in plain PyTorch.

The Lightning tasks that train them live in the sibling package ``tasks``.
"""
from .arithmetic import conv_output_size
from .backbones import Backbone, FeatureInfo, create_backbone, list_backbones, register_backbone
from .weights import WeightsError, load_weights, read_state_dict

__version__ = "0.1.0"

__all__ = ["Backbone", "FeatureInfo", "WeightsError", "conv_output_size", "create_backbone", "list_backbones",
           "load_weights", "read_state_dict", "register_backbone"]
