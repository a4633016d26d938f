"""Loss functions the papers define (plain PyTorch)."""
from .dense import (IGNORE_INDEX, DepthLoss, NormalsLoss, SemanticLoss, depth_loss, normals_loss, semantic_loss,
                    valid_depth_mask, valid_normals_mask)

__all__ = ["IGNORE_INDEX", "DepthLoss", "NormalsLoss", "SemanticLoss", "depth_loss", "normals_loss", "semantic_loss",
           "valid_depth_mask", "valid_normals_mask"]
