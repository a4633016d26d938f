"""Detection heads and box operations (plain PyTorch + torchvision.ops) for OverFeat and the R-CNN family."""
from .boxes import (BOX_WEIGHTS, decode_boxes, detection_loss, encode_boxes, postprocess_detections,
                    sample_indices, sample_rois)
from .features import (BackboneFeatures, LastStageBoxHead, freeze_batchnorm, freeze_unused_parameters,
                       set_trainable_stages)
from .heads import BoxPredictor, ConvWindowHead, RoIBoxHead, pretrained_fc_layers
from .windows import context_boxes, warp_regions, window_grid

__all__ = ["BOX_WEIGHTS", "BackboneFeatures", "BoxPredictor", "ConvWindowHead", "LastStageBoxHead", "RoIBoxHead",
           "context_boxes", "decode_boxes", "detection_loss", "encode_boxes", "freeze_batchnorm", "freeze_unused_parameters",
           "postprocess_detections", "pretrained_fc_layers", "sample_indices", "sample_rois", "set_trainable_stages", "warp_regions", "window_grid"]
