"""Fast R-CNN (Girshick 2015): the R-CNN proposals, but the convolutional features are computed once per
image and each proposal's features are pooled from them (RoI pooling, torchvision ``roi_pool`` or
``roi_align``), then fc6, fc7 and the sibling softmax classifier / class-specific box regressor, trained
jointly with the multi-task loss (softmax log loss + smooth L1) on mini-batches of RoIs of which 25% are
foreground (IoU >= 0.5) and the rest background (IoU in [0.1, 0.5)). Detections: per-class NMS.

fc6 and fc7 start from the pre-trained classifier's (Section 2.2 "Initializing from pre-trained networks":
the last max pool becomes an RoI pool to the classifier's input grid, 7x7 for VGG-16, and the final fc +
softmax become the two siblings) whenever their shapes match; the backbone's own pooled head is dropped.
At test time fc6/fc7 can be compressed by truncated SVD (Section 3.1; ``svd_rank_fc6``, ``svd_rank_fc7``).

Proposals come with the batch (``batch["proposals"]``): the DataModule's ``proposals: selective_search``
or a proposals file.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchvision.ops import roi_align, roi_pool

from densecnn.heads.detection import RoIBoxHead, pretrained_fc_layers

from .proposal_based import ProposalDetectionTask, proposals_of

__all__ = ["FastRCNNTask", "proposals_of"]


class FastRCNNTask(ProposalDetectionTask):
    """Fast R-CNN (Girshick 2015): convolutional features once per image, RoI pooling (or RoIAlign) of the
    proposals, fc6/fc7 from the pretrained classifier (Section 2.2), the multi-task softmax + smooth L1 loss
    (Section 2.3) and optional truncated SVD of fc6/fc7 at test (Section 3.1).
    """
    def __init__(
        self,
        backbone: str = "vgg16",
        num_classes: int = 20,
        weights: str | None = None,
        feature_index: int = -1,
        roi_op: Literal["pool", "align"] = "pool",
        roi_size: int = 7,
        hidden_dim: int = 4096,
        dropout: float = 0.5,
        rois_per_image: int = 64,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        bg_iou_low: float = 0.1,
        nms_thresh: float = 0.3,
        svd_rank_fc6: int | None = None,
        svd_rank_fc7: int | None = None,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn, trainable_stages:
                see ``DetectionTask``.
            feature_index: the ``feature_info`` map RoIs are pooled from (the last conv map, VGG's conv5_3).
            roi_op, roi_size: ``pool`` (the paper's RoI max pooling) or ``align`` (bilinear), to
                ``roi_size`` x ``roi_size`` (7 for VGG-16).
            hidden_dim, dropout: fc6/fc7 width (4096 in the paper) and dropout. When the backbone's classifier
                has fc6/fc7 of exactly this shape (VGG-16 at ``roi_size`` 7 and 4096, AlexNet at 6 and 4096)
                they initialise the head; otherwise fc6/fc7 start fresh (the log says which).
            rois_per_image: R / N, RoIs sampled per image (the paper: 128 RoIs from N = 2 images).
            fg_fraction, fg_iou, bg_iou_low: 25% foreground at IoU >= 0.5, background IoU in [0.1, 0.5).
            svd_rank_fc6, svd_rank_fc7: compress fc6/fc7 by truncated SVD to these ranks when the model is
                tested or predicts (Section 3.1: 1024 and 256 for VGG-16); ``null`` keeps a layer whole.
        """
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_detection_backbone()
        self.freeze_unused_backbone([h.feature_index])
        info = self.backbone.feature_info[h.feature_index]
        self.spatial_scale = 1.0 / info.reduction
        self.box_head = RoIBoxHead(info.num_chs, h.roi_size, h.num_classes, h.hidden_dim, h.dropout)
        self.take_pretrained_fc()

    def take_pretrained_fc(self) -> None:
        """Fast R-CNN Section 2.2: fc6/fc7 from the pre-trained classifier when their shapes match; the
        backbone's pooled head (pool, fc6, fc7) is then removed, as it is when they do not match: RoIs never
        run through it, and its weights would only be frozen dead weight in every checkpoint."""
        h = self.hparams
        fcs = pretrained_fc_layers(self.backbone)
        name = f"backbone {h.backbone!r}"
        if len(fcs) != 2:
            rank_zero_info(f"Fast R-CNN: {name} has no fc6/fc7 classifier; fc6/fc7 are initialised fresh")
            return
        if self.box_head.load_fc(*fcs):
            source = "pretrained" if h.weights else "randomly initialised (weights: null)"
            rank_zero_info(f"Fast R-CNN: fc6/fc7 initialised from the {source} classifier of {name} "
                           f"({fcs[0].in_features} -> {fcs[0].out_features} -> {fcs[1].out_features})")
        else:
            rank_zero_info(f"Fast R-CNN: the classifier fc6/fc7 of {name} ({fcs[0].in_features} -> {fcs[0].out_features}"
                           f" -> {fcs[1].out_features}) do not match the head's ({self.box_head.fc6.in_features} -> "
                           f"{h.hidden_dim} -> {h.hidden_dim}: roi_size {h.roi_size}, hidden_dim {h.hidden_dim}); "
                           f"fc6/fc7 are initialised fresh")
        self.backbone.classifier = nn.Identity()

    def head_modules(self) -> list:
        return [self.box_head]

    def pooled_rois(self, images: torch.Tensor, rois: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Features once per image, then one ``roi_size`` x ``roi_size`` map per RoI (``rois``: one ``(N_i, 4)``
        tensor per image, or one ``(K, 5)`` tensor of ``[image index, x1, y1, x2, y2]`` rows)."""
        h = self.hparams
        features = self.backbone.feature_maps(images, [h.feature_index])[0]
        if features.dtype == torch.bfloat16:
            # bf16-mixed: RoI coordinates in bfloat16 (8-bit mantissa) would snap to a 4 px grid at 500-1000 px,
            # and torchvision's roi_pool has no bfloat16 CPU kernel: pool from float32 (exact for max pooling)
            features = features.float()
        rois = rois.to(features.dtype) if isinstance(rois, torch.Tensor) else [r.to(features.dtype) for r in rois]
        if h.roi_op == "align":
            return roi_align(features, rois, h.roi_size, self.spatial_scale, sampling_ratio=2, aligned=True)
        return roi_pool(features, rois, h.roi_size, self.spatial_scale)

    def region_features(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        return self.box_head.features(self.pooled_rois(images, boxes))

    def roi_features(self, images: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.box_head.features(self.pooled_rois(images, rois))

    def export_spec(self, *, dynamic_batch: bool = True, datamodule=None):
        """The per-RoI network: images and RoIs -> class probabilities and box deltas (``tasks.detection.
        export``), with fc6/fc7 compressed by truncated SVD when ``svd_rank_fc6``/``svd_rank_fc7`` ask for it,
        as for test and predict."""
        from .export import region_spec

        self._compress_for_inference()
        h = self.hparams
        return region_spec(self, dynamic_batch, f"Fast R-CNN (RoI {'max pooling' if h.roi_op == 'pool' else 'align'}"
                                                f" to {h.roi_size} x {h.roi_size}, fc6, fc7, classifier and box "
                                                f"regressor inside the graph)", datamodule)

    def predict_regions(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box_head.predictor(features)

    def background_iou(self) -> tuple[float, float]:
        return self.hparams.bg_iou_low, self.hparams.fg_iou

    # ---- truncated SVD at test time (Section 3.1) --------------------------------------------------------
    def compress_fc(self, rank_fc6: int | None, rank_fc7: int | None) -> None:
        """Replace fc6/fc7 by their rank-t truncated SVD (for detection only: not meant to be trained on)."""
        self.box_head.compress_fc(rank_fc6, rank_fc7)

    def _compress_for_inference(self) -> None:
        h = self.hparams
        if h.svd_rank_fc6 is not None or h.svd_rank_fc7 is not None:
            self.compress_fc(h.svd_rank_fc6, h.svd_rank_fc7)

    def on_test_start(self) -> None:
        self._compress_for_inference()

    def on_predict_start(self) -> None:
        self._compress_for_inference()
