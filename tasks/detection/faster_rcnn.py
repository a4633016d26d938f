"""Faster R-CNN (Ren et al. 2015) on our backbones, as the ResNet paper's detection appendix uses it
(S1 L646-762): torchvision's ``FasterRCNN`` with its ``AnchorGenerator``, ``RPNHead`` and
``MultiScaleRoIAlign``, fed by ``forward_features``.

Three layouts:
  * ``box_head: last_stage`` (default, the ResNet paper's): the RPN and RoI pooling work on the
    second-to-last feature map (conv4_x, stride 16); the backbone's declared last stage (conv5_x; for
    VGG pool4 and conv5_1-5_3) runs on each 14 x 14 pooled RoI, then global average pooling and the sibling
    classifier/regressor.
  * ``box_head: mlp``: one feature map (``feature_index``, the last by default), 7 x 7 RoIs and two fully connected layers (VGG-16 style).
  * ``fpn: true``: a feature pyramid over the last ``fpn_levels`` maps (plus a max-pooled level), one
    anchor size per level, and the two-layer MLP head.

Resizing and normalisation happen in OUR data pipeline (``densecnn.data.detection``), so torchvision's
``GeneralizedRCNNTransform`` is bypassed: ``run`` calls the detector's backbone, RPN and RoI heads on the
batch as the DataModule produced it, with an ``ImageList`` whose ``image_sizes`` are each image's content
(``batch["image_size"]``), not the padded square. The RPN therefore clips its proposals to the content (those
lying wholly in the padding collapse and are dropped) and the RoI heads clip the detections to it.

Training is Ren et al.'s approximate joint training (§3.2): the RPN's losses (objectness, anchor regression)
and the Fast R-CNN losses on the RPN's proposals are summed into one loss and backpropagated together
through the shared convolutional features; the proposals' coordinates are treated as constants (torchvision
detaches them), so the derivative of the RoI losses with respect to the box coordinates is ignored.

Defaults follow the papers: 3 scales (128, 256, 512) x 3 ratios (1:2, 1:1, 2:1) = 9 anchors per location on
one map (Ren et al. §3.1.1); 2000 RPN proposals kept after NMS in training and 300 at test (the ResNet
paper, S1 L652); the COCO recipe keeps the top 12000 anchors before the RPN's NMS in training.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

from densecnn.backbones.base import StagesUnavailable
from densecnn.heads.detection import BackboneFeatures, LastStageBoxHead

from .base import DetectionTask


class FasterRCNNTask(DetectionTask):
    """Faster R-CNN (Ren et al. 2015) through torchvision's ``FasterRCNN`` on a densecnn backbone: the ResNet
    paper's layout (RPN on conv4_x, conv5_x as the per-RoI head), a two-FC head, or FPN; approximate joint
    training (Section 3.2).
    """
    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 20,
        weights: str | None = None,
        box_head: Literal["last_stage", "mlp"] = "last_stage",
        fpn: bool = False,
        fpn_levels: int = 4,
        fpn_channels: int = 256,
        frozen_bn: bool = True,
        trainable_stages: int | None = 3,
        anchor_sizes: Sequence[int] = (128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 6000,
        rpn_post_nms_top_n_test: int = 300,
        rpn_nms_thresh: float = 0.7,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 128,
        box_positive_fraction: float = 0.25,
        mlp_dim: int = 1024,
        feature_index: int = -1,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img: see
                ``DetectionTask``; ``nms_thresh`` 0.3 is the ResNet paper's (S1 L668).
            box_head, fpn, fpn_levels, fpn_channels: the layout (module docstring).
            frozen_bn, trainable_stages: see ``DetectionTask``; on by default here, as the ResNet paper's
                detection appendix fine-tunes (frozen BN, res3-res5 trained).
            anchor_sizes, aspect_ratios: anchors, every size at every ratio on one map (Ren et al. §3.1.1: 128,
                256, 512 px at 1:2, 1:1, 2:1, so 9 per location); with FPN one size per pyramid level, so
                ``fpn_levels + 1`` sizes, each at every ratio.
            rpn_*: RPN proposal counts, NMS and mini-batch; 300 proposals at test (S1 L652).
            box_batch_size_per_image, box_positive_fraction: Fast R-CNN's RoI mini-batch (25% foreground).
            mlp_dim: width of the two fully connected layers of the ``mlp``/FPN head.
            feature_index: the ``feature_info`` map the ``mlp`` head works on (default the last).
        """
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         frozen_bn=frozen_bn, trainable_stages=trainable_stages, **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        body = self.build_detection_backbone()
        self.backbone = body
        sizes, ratios = tuple(int(s) for s in h.anchor_sizes), tuple(float(r) for r in h.aspect_ratios)
        if h.fpn:
            n = len(body.feature_info)
            levels = min(h.fpn_levels, n)
            features = BackboneFeatures(body, indices=list(range(n - levels, n)), fpn=True,
                                        fpn_channels=h.fpn_channels)
            self.freeze_unused_backbone(features.indices)
            if len(sizes) != len(features.names):
                raise ValueError(f"model.init_args.anchor_sizes: with fpn, one size per pyramid level: "
                                 f"{len(features.names)} (fpn_levels + 1), got {list(sizes)}")
            anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
            pooler = MultiScaleRoIAlign(features.names[:-1], output_size=7, sampling_ratio=2)
            head = TwoMLPHead(features.out_channels * 7 * 7, h.mlp_dim)
            representation = h.mlp_dim
        elif h.box_head == "last_stage":
            if len(body.feature_info) < 2:
                raise ValueError(f"backbone {h.backbone!r} has one feature map; use box_head: mlp")
            features = BackboneFeatures(body, indices=[-2])
            self.freeze_unused_backbone([-2, -1])  # the last stage runs in the box head
            last = body.feature_info[-1]
            head = LastStageBoxHead(self._last_stage(body), last.num_chs)
            anchors = AnchorGenerator((sizes,), (ratios,))
            pooler = MultiScaleRoIAlign(features.names, output_size=14, sampling_ratio=2)
            representation = last.num_chs
        elif h.box_head == "mlp":
            features = BackboneFeatures(body, indices=[h.feature_index])
            self.freeze_unused_backbone([h.feature_index])
            anchors = AnchorGenerator((sizes,), (ratios,))
            pooler = MultiScaleRoIAlign(features.names, output_size=7, sampling_ratio=2)
            head = TwoMLPHead(features.out_channels * 7 * 7, h.mlp_dim)
            representation = h.mlp_dim
        else:
            raise ValueError(f"model.init_args.box_head: {h.box_head!r} is not one of last_stage, mlp")
        self.detector = FasterRCNN(
            features, rpn_anchor_generator=anchors, box_roi_pool=pooler,
            box_head=head, box_predictor=FastRCNNPredictor(representation, h.num_classes + 1),
            rpn_pre_nms_top_n_train=h.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=h.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=h.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=h.rpn_post_nms_top_n_test,
            rpn_nms_thresh=h.rpn_nms_thresh, rpn_batch_size_per_image=h.rpn_batch_size_per_image,
            box_batch_size_per_image=h.box_batch_size_per_image, box_positive_fraction=h.box_positive_fraction,
            box_score_thresh=h.score_thresh, box_nms_thresh=h.nms_thresh,
            box_detections_per_img=h.detections_per_img)
        # resizing and normalisation belong to the data pipeline: no second transform (it would resize to
        # 800 px and normalise again); ``run`` replaces ``GeneralizedRCNN.forward``
        del self.detector.transform
        # bf16-mixed: keep box arithmetic in float32 (see ``run``): torchvision's BoxCoder casts the reference
        # boxes to the deltas' dtype, so bfloat16 deltas would snap anchors and proposals to a 4 px grid at 512-1024 px
        for module in (self.detector.rpn.head, self.detector.roi_heads.box_predictor):
            module.register_forward_hook(_float32_outputs)

    def _last_stage(self, body) -> torch.nn.Module:
        """The backbone's declared last stage as one module (ResNet: layer4; VGG/AlexNet: the pool and
        convolutions after the second-to-last map), shared with the backbone; an error naming the
        alternatives where a family has none that can run on pooled regions."""
        name = self.hparams.backbone
        try:
            stage = body.stage_module(len(body.feature_info) - 1)
        except StagesUnavailable as err:
            raise ValueError(f"model.init_args.box_head: last_stage needs the last stage of {name!r} as one module "
                             f"({err}); use box_head: mlp or fpn: true") from err
        if next(stage.parameters(), None) is None:
            raise ValueError(f"model.init_args.box_head: the last stage of {name!r} has no parameters to run on "
                             f"each region; use box_head: mlp or fpn: true")
        return stage

    def compile_targets(self) -> list[tuple[torch.nn.Module, str]]:
        """torchvision's ``backbone`` of the detector (ours with the FPN, when there is one): fixed-size batches
        in, feature maps out. The RPN and RoI heads stay eager: their proposal counts change every image and
        their NMS and sampling are data-dependent (graph breaks, recompilation)."""
        return [(self.detector.backbone, "forward")]

    def export_spec(self, *, dynamic_batch: bool = True, datamodule=None):
        """One image -> boxes, labels, scores through torchvision's ONNX path, resize and NMS included
        (``tasks.detection.export``); one image per call whatever ``dynamic_batch`` says."""
        from .export import faster_rcnn_spec

        return faster_rcnn_spec(self, datamodule)

    def head_modules(self) -> list:
        heads = [self.detector.rpn, self.detector.roi_heads]
        if self.detector.backbone.fpn is not None:
            heads.append(self.detector.backbone.fpn)
        return heads

    @staticmethod
    def _targets(batch: dict) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in batch["target"]]

    def run(self, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]],
            targets: list[dict[str, torch.Tensor]] | None = None
            ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """torchvision's ``GeneralizedRCNN.forward`` without its transform: the batch as the data pipeline made
        it, and each image's content size (``(height, width)``) for the RPN and RoI heads to clip to.
        Returns ``(detections, losses)``: detections in eval mode, losses in training mode."""
        detector = self.detector
        batch = ImageList(images, [(int(h), int(w)) for h, w in image_sizes])
        # float32 maps: torchvision's AnchorGenerator makes the anchors in the maps' dtype (bfloat16 under
        # bf16-mixed autocast, where the convolutions still run in bfloat16)
        features = OrderedDict((name, f.float()) for name, f in detector.backbone(images).items())
        proposals, rpn_losses = detector.rpn(batch, features, targets)
        detections, roi_losses = detector.roi_heads(features, proposals, batch.image_sizes, targets)
        return detections, {**rpn_losses, **roi_losses}

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.run(batch["image"], self.image_sizes(batch), self._targets(batch))[1]

    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        was_training = self.detector.training
        self.detector.eval()
        detections = self.run(images, self.image_sizes({**batch, "image": images}))[0]
        self.detector.train(was_training)
        return detections


def _float32_outputs(module: torch.nn.Module, args, output):
    """Forward hook: a head's (nested) outputs in float32, for the box arithmetic that follows them."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_float32_outputs(module, args, o) for o in output)
    return output
