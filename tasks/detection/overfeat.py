"""OverFeat (Sermanet et al. 2014; S3 L3928-3997): "examine every position and scale".

The classifier's fully connected layers are convolutions (``ConvWindowHead``): trained on single
``window``-pixel crops (where the head's output is 1 x 1), the same network applied to a whole image
gives a map of class scores, one per window position, in one forward pass ("no need to compute separate
windows, just one big input window"). An image pyramid (``scales``) covers object sizes; the
class-specific regression outputs of the same head refine each window's box; the windows of all scales
are merged with per-class NMS (torchvision ``batched_nms``), where OverFeat used its own greedy merging.

Two ways to get the head (``head``):
  * ``fresh``: new fc6/fc7 convolutions (``hidden_dim`` wide) on the ``feature_index`` map.
  * ``converted``: the paper's point. A classifier with fully connected layers (AlexNet, ZF-Net, VGG:
    ``weights`` a classifier trained on window-sized crops) is turned into the sliding detector: its fc6
    ``(4096, C * k * k)`` becomes a ``k x k`` convolution ``(4096, C, k, k)`` and fc7 a 1 x 1 convolution
    (``ConvWindowHead.from_classifier``), so at each position of the score map fc7 holds exactly what the
    classifier computes on that window's features. The class scores and box regression are new layers (the
    detector's K + 1 classes).

Where it slides. OverFeat slides its classifier over pool5 (the layer the fully connected layers read),
and to make the score map denser than pool5's stride it computes pool5 with *offset max-pooling*
(Sermanet §3.3): the last max pooling is applied at every offset of its stride, the classifier runs on
each of the shifted pool5 maps and the outputs are interleaved, giving one window every conv5 stride
instead of every pool5 stride. Here:
  * ``converted`` slides over pool5 as the paper does: the backbone's layers after its last feature map
    (AlexNet/VGG's pool5 max pooling) run once on the whole image's conv5 map, then fc6 slides over the result,
    so each window's fc6 input is exactly the classifier's flattened pool5 input. The window stride is pool5's
    (32 px for AlexNet/VGG). Offset pooling is not implemented: its job, a denser grid, is done here by the
    image pyramid and the box regression, and without it one pass per scale gives every window.
  * ``fresh`` slides over the ``feature_index`` map itself (conv5, or an earlier map): fc6 is trained on
    that map directly, so there is no pooling between the map and the head and the window stride is the
    map's stride (16 px at conv5), the grid offset pooling was designed to reach.

Aspect ratios (``window_ratios``). A square window never reaches IoU 0.5 with an object whose aspect ratio
exceeds 2.25 (the best square, centred, of side sqrt(w h), gives 1 / (2 sqrt(a) - 1)), so tall or wide
objects would never be positives. Each position therefore stands for ``len(window_ratios)`` boxes of the
square window's area and centre, of aspect ratio ``r = height / width`` (as the RPN's anchors share one
sliding window); the head has one group of K + 1 scores and 4K deltas per ratio. All ratios are computed
from the same square window's features, so the dense evaluation still equals the classifier run on each
cropped square window (``score_windows``), and the converted classifier's fc6/fc7 serve every ratio.

Real image sizes. Images are padded to a square by the data pipeline; the boxes that lie wholly in the
padding (``batch["image_size"]``: the content's height and width) are neither trained on nor scored, and
detections are clipped to the content.

Training follows the same path as detection: the pyramid's score maps are computed for the whole image
and the loss is taken on windows sampled from them, ``windows_per_image`` per image with up to 25%
foreground (IoU >= ``fg_iou`` with an object, labelled with its class) and the rest background: the
softmax log loss plus smooth L1 on the foreground windows' class-specific box deltas. With a valid-convolution
backbone this equals training on each window cropped separately (OverFeat trained on crops), at the cost
of one pass per scale, and the classifier learns on exactly the windows, scales and positions it scores
at test time.

Window geometry: score-map position (i, j) at pyramid scale f looks at the input square of side
``window`` whose corner is at (j, i) * stride, that is ``window / f`` image pixels at (j, i) * stride / f.
With an unpadded (valid-convolution) backbone such as ``lenet5`` the dense scores equal those of the
cropped windows exactly (``benchmarks/detection.py`` checks it); padded backbones see some context.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from densecnn.backbones import get_entry
from densecnn.heads.detection import (
    ConvWindowHead,
    detection_loss,
    postprocess_detections,
    pretrained_fc_layers,
    sample_indices,
    window_grid,
)

from .base import DetectionTask


class OverFeatTask(DetectionTask):
    """OverFeat (Sermanet et al. 2013): the classifier's fully connected layers as convolutions, so one pass
    over a pyramid scale scores every window (Section 3.5); class-specific box regression (Section 4.2);
    windows merged with NMS instead of the paper's greedy merge, and no offset max-pooling (Section 3.3).
    """
    def __init__(
        self,
        backbone: str = "alexnet",
        num_classes: int = 20,
        weights: str | None = None,
        feature_index: int = -1,
        window: int | None = None,
        scales: Sequence[float] = (1.0,),
        window_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        head: Literal["fresh", "converted"] = "fresh",
        hidden_dim: int = 1024,
        dropout: float = 0.5,
        windows_per_image: int = 64,
        fg_fraction: float = 0.25,
        fg_iou: float = 0.5,
        nms_thresh: float = 0.3,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, num_classes, weights, score_thresh, nms_thresh, detections_per_img, frozen_bn, trainable_stages:
                see ``DetectionTask``.
            feature_index: the ``feature_info`` map the convolutional classifier slides over (with
                ``head: converted``, the last: the map the classifier's pooling and fc6 read).
            window: the window side in pixels (the backbone's input size by default: 227 for AlexNet); its
                feature map must be square.
            scales: the image pyramid, factors applied to the input image (>1 finds smaller objects).
            window_ratios: box aspect ratios (height / width) each window position stands for (module
                docstring); ``[1.0]`` is square windows only.
            head: ``fresh`` fc6/fc7 convolutions, or ``converted`` from the backbone's classifier (its fully
                connected layers as convolutions, module docstring).
            hidden_dim, dropout: width of the fresh fc6/fc7 convolutions, and the head's dropout.
            windows_per_image, fg_fraction, fg_iou: training windows sampled per image, 25% foreground
                at IoU >= 0.5, the rest background.
        """
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"model.init_args.scales must be positive factors, got {list(scales)}")
        if not window_ratios or any(r <= 0 for r in window_ratios):
            raise ValueError(f"model.init_args.window_ratios must be positive height/width ratios, "
                             f"got {list(window_ratios)}")
        self._check_choice("head", head, ("fresh", "converted"))
        super().__init__(backbone=backbone, num_classes=num_classes, weights=weights, nms_thresh=nms_thresh,
                         **kwargs)

    def configure_models(self) -> None:
        h = self.hparams
        self.backbone = self.build_detection_backbone()
        self.freeze_unused_backbone([h.feature_index])
        entry = get_entry(h.backbone)
        self.window = int(h.window or entry.input_size[-1])
        self.ratios = tuple(float(r) for r in h.window_ratios)
        in_chans = int((h.backbone_kwargs or {}).get("in_chans", entry.input_size[0]))
        info = self.backbone.feature_info[h.feature_index]
        # converted: the classifier's layers between the last map and fc6 (pool5) run on the whole map
        self.slide_input = self._layers_before_fc() if h.head == "converted" else nn.Identity()
        self.stride = info.reduction * math.prod(_stride(m) for m in self.slide_input.modules())
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():  # the window's feature-map size: the fully connected layer's kernel
            probe = self.slide_input(self.backbone.feature_maps(
                torch.zeros(1, in_chans, self.window, self.window), [h.feature_index])[0])
        self.backbone.train(was_training)
        channels, cells = probe.shape[1], probe.shape[-2:]
        if cells[0] != cells[1] or cells[0] < 1:
            raise ValueError(f"a {self.window} px window gives a {tuple(cells)} feature map on {h.backbone}; "
                             f"choose a window that gives a square one")
        if h.head == "converted":
            self.head = self._converted_head(channels, int(cells[0]))
        else:
            self.head = ConvWindowHead(info.num_chs, int(cells[0]), h.num_classes, h.hidden_dim, h.dropout,
                                       num_ratios=len(self.ratios))

    def _layers_before_fc(self) -> nn.Module:
        """The backbone's layers after its last feature map and before its classifier (pool5), as one module
        sharing theirs; an error naming the keys where the backbone has no such classifier."""
        h = self.hparams
        taps = getattr(self.backbone, "tap_indices", None)
        if taps is None or not pretrained_fc_layers(self.backbone):
            raise ValueError(f"model.init_args.head: converted needs a backbone whose classifier has fully connected "
                             f"layers (alexnet, zfnet, vgg*); {h.backbone!r} has none: use head: fresh")
        if h.feature_index not in (-1, len(taps) - 1):
            raise ValueError(f"model.init_args.feature_index: head: converted slides the classifier over the map "
                             f"its fully connected layers read, the last (-1), not {h.feature_index}")
        return nn.Sequential(*self.backbone.features[taps[-1] + 1:])

    def _converted_head(self, channels: int, cells: int) -> ConvWindowHead:
        h = self.hparams
        fcs = pretrained_fc_layers(self.backbone)
        if len(fcs) < 2:
            raise ValueError(f"model.init_args.head: converted needs fc6 and fc7 in {h.backbone!r}'s classifier, "
                             f"found {len(fcs)} fully connected layer(s)")
        try:
            head = ConvWindowHead.from_classifier(fcs[0], fcs[1], channels, cells, h.num_classes, h.dropout,
                                                  num_ratios=len(self.ratios))
        except ValueError as err:
            raise ValueError(f"model.init_args.window: {self.window} px gives a {channels} x {cells} x {cells} map "
                             f"on {h.backbone!r}, but {err}; use the classifier's input size "
                             f"({get_entry(h.backbone).input_size[-1]})") from None
        self.backbone.classifier = nn.Identity()  # its fc6/fc7 now live in the head
        rank_zero_info(f"OverFeat: fc6/fc7 of {h.backbone}'s classifier converted to {cells} x {cells} and 1 x 1 "
                       f"convolutions")
        return head

    def head_modules(self) -> list:
        return [self.head]

    # ---- the two ways of scoring windows -----------------------------------------------------------------
    def score_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over whole images: logits ``(B, A * (K + 1), rows, cols)`` and deltas ``(B, A * 4K, rows,
        cols)``, one per window position and box ratio (see ``window_boxes``, ``ratio_boxes``)."""
        features = self.backbone.feature_maps(images, [self.hparams.feature_index])[0]
        return self.head(self.slide_input(features))

    def window_boxes(self, rows: int, cols: int, scale: float = 1.0, device=None) -> torch.Tensor:
        """The square windows behind a score map (what the classifier sees), in the pixels of the image before
        the pyramid's scaling: ``(rows * cols, 4)``."""
        return window_grid(rows, cols, self.stride, self.window, device) / scale

    def ratio_boxes(self, rows: int, cols: int, scale: float = 1.0, device=None) -> torch.Tensor:
        """The boxes the scores stand for, ``window_ratios`` per window: ``(rows * cols * A, 4)``."""
        return window_grid(rows, cols, self.stride, self.window, device, self.ratios) / scale

    def score_windows(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify ``window``-sized crops one by one as a plain classifier would: ``(N, A * (K + 1))``,
        ``(N, A * 4K)``."""
        logits, deltas = self.score_maps(crops)
        return logits.flatten(1), deltas.flatten(1)

    def _per_box(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, A * D, rows, cols)`` -> ``(B, rows * cols * A, D)``, in ``ratio_boxes`` order (float32)."""
        b, _, rows, cols = maps.shape
        a = len(self.ratios)
        return maps.float().reshape(b, a, -1, rows, cols).permute(0, 3, 4, 1, 2).reshape(b, rows * cols * a, -1)

    def pyramid_windows(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every box of every pyramid scale, scored in one pass per scale: logits ``(B, N, K + 1)``, deltas
        ``(B, N, 4K)`` and the ``N`` boxes ``(N, 4)`` in the pixels of ``images`` (before scaling)."""
        logits, deltas, boxes = [], [], []
        for scale in self.hparams.scales:
            scaled = images if scale == 1 else F.interpolate(images, scale_factor=float(scale), mode="bilinear",
                                                             align_corners=False)
            if min(scaled.shape[-2:]) < self.window:
                continue  # the image is smaller than one window at this scale
            scale_logits, scale_deltas = self.score_maps(scaled)
            rows, cols = scale_logits.shape[-2:]
            logits.append(self._per_box(scale_logits))
            deltas.append(self._per_box(scale_deltas))
            boxes.append(self.ratio_boxes(rows, cols, float(scale), images.device))
        if not boxes:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px are smaller than one {self.window} px window "
                             f"at every scale of model.init_args.scales={list(self.hparams.scales)}")
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1), torch.cat(boxes)

    @staticmethod
    def in_content(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Indices of the boxes that overlap the image's content ``(height, width)`` (the rest lie wholly in
        the padding the pipeline added at the bottom and right)."""
        return torch.where((boxes[:, 0] < size[1]) & (boxes[:, 1] < size[0]) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0))[0]

    def export_spec(self, *, dynamic_batch: bool = True, datamodule=None):
        """The convolutional network at every pyramid scale (class-probability and box-delta maps); the window
        decoding is documented in ``preprocess["decoding"]`` (``tasks.detection.export``)."""
        from .export import overfeat_spec

        return overfeat_spec(self, dynamic_batch, datamodule)

    # ---- training ----------------------------------------------------------------------------------------
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss on windows sampled from the same dense score maps ``detect`` uses, so training sees
        exactly the windows (positions, scales, context) that are scored at test time."""
        h = self.hparams
        logits, deltas, boxes = self.pyramid_windows(batch["image"])
        picked_logits, picked_deltas, labels, targets = [], [], [], []
        for i, (target, size) in enumerate(zip(batch["target"], self.image_sizes(batch))):
            inside = self.in_content(boxes, size)
            keep, l, t = sample_indices(boxes[inside], target["boxes"], target["labels"],
                                        batch_size=h.windows_per_image, fg_fraction=h.fg_fraction, fg_iou=h.fg_iou,
                                        bg_iou=(0.0, h.fg_iou))
            picked_logits.append(logits[i, inside[keep]]), picked_deltas.append(deltas[i, inside[keep]])
            labels.append(l), targets.append(t)
        deltas = torch.cat(picked_deltas)
        deltas = torch.cat([deltas.new_zeros((len(deltas), 4)), deltas], dim=1)  # no box for background
        cls_loss, box_loss = detection_loss(torch.cat(picked_logits), deltas, torch.cat(labels), torch.cat(targets))
        return {"loss_classifier": cls_loss, "loss_box_reg": box_loss}

    # ---- detection ---------------------------------------------------------------------------------------
    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        h = self.hparams
        logits, deltas, boxes = self.pyramid_windows(images)
        scores = logits.softmax(dim=2)
        deltas = torch.cat([deltas.new_zeros((*deltas.shape[:2], 4)), deltas], dim=2)
        detections = []
        for i, size in enumerate(self.image_sizes({**batch, "image": images})):
            inside = self.in_content(boxes, size)
            detections.append(postprocess_detections(scores[i, inside], deltas[i, inside], boxes[inside], size,
                                                     score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                                                     detections_per_img=h.detections_per_img))
        return detections


def _stride(module: nn.Module) -> int:
    """A layer's spatial stride (1 for layers without one); square strides, as the FC-head families use."""
    stride = getattr(module, "stride", 1)
    return int(stride[0] if isinstance(stride, (tuple, list)) else stride)
