"""Box regression targets, proposal sampling and per-class NMS shared by the R-CNN family and OverFeat.

Box regression (R-CNN appendix C; Fast R-CNN Eq. 2): a proposal P (centre Px, Py, size Pw, Ph) is moved to
G by ``t = (wx (Gx - Px) / Pw, wy (Gy - Py) / Ph, ww log(Gw / Pw), wh log(Gh / Ph))``. The weights
(10, 10, 5, 5) are Fast R-CNN's target normalisation (std 0.1, 0.1, 0.2, 0.2), as torchvision uses; the
coding itself is torchvision's ``BoxCoder`` and the IoU assignment its ``Matcher``.

What stays here and why (torchvision's detection ``_utils`` / ``roi_heads`` do something slightly different):
  * the RoI sampling draws from an explicit ``torch.Generator`` (a run's seeded draws: DESIGN, reproducible
    runs) and keeps foreground first; ``BalancedPositiveNegativeSampler`` draws from the global RNG and
    returns masks;
  * the background band has a lower end (Fast R-CNN's [0.1, 0.5), Section 2.3) while torchvision's RoI heads
    take every RoI under 0.5 as background, and an image whose proposals all fall outside the band still
    trains on background;
  * ``detection_loss`` uses the paper's smooth L1 (beta = 1, Fast R-CNN Eq. 3; ``fastrcnn_loss`` fixes
    Detectron's 1/9), gives a zero loss (not NaN) on a batch without RoIs, and can restrict the regression
    to a subset of the foreground (R-CNN regresses only proposals with IoU >= 0.6, appendix C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_CLAMP = math.log(1000.0 / 16)  # keeps exp() finite for wild predictions (torchvision's bbox_xform_clip)


def encode_boxes(gt: torch.Tensor, proposals: torch.Tensor, weights=BOX_WEIGHTS) -> torch.Tensor:
    """Regression targets ``t`` taking each proposal to its ground-truth box (both ``(N, 4)`` xyxy)."""
    return BoxCoder(weights, _CLAMP).encode_single(gt, proposals)


def decode_boxes(deltas: torch.Tensor, proposals: torch.Tensor, weights=BOX_WEIGHTS) -> torch.Tensor:
    """Apply ``(N, C * 4)`` deltas to ``(N, 4)`` proposals: ``(N, C, 4)`` boxes (one per class)."""
    return BoxCoder(weights, _CLAMP).decode_single(deltas.reshape(len(deltas), -1), proposals
                                                   ).reshape(len(deltas), -1, 4)


def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *,
                batch_size: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                bg_iou: tuple[float, float] = (0.1, 0.5), add_gt: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast R-CNN's mini-batch sampling for one image (Section 2.3): up to ``fg_fraction`` of ``batch_size``
    RoIs from proposals with IoU >= ``fg_iou`` to a ground-truth box (labelled with its class), the rest
    background (label 0) from IoU in ``[bg_iou[0], bg_iou[1])``. Ground-truth boxes join the proposals
    (``add_gt``), so an image always has positives when it has objects.

    Returns ``(rois (B, 4), labels (B,), regression targets (B, 4))``; targets of background RoIs are 0.
    """
    if add_gt and len(gt_boxes):
        proposals = torch.cat([proposals, gt_boxes.to(proposals)])
    keep, labels, targets = sample_indices(proposals, gt_boxes, gt_labels, batch_size=batch_size,
                                           fg_fraction=fg_fraction, fg_iou=fg_iou, bg_iou=bg_iou,
                                           generator=generator)
    return proposals[keep], labels, targets


def sample_indices(boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *,
                   batch_size: int = 128, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                   bg_iou: tuple[float, float] = (0.1, 0.5),
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sample_rois`` on a fixed set of ``boxes`` (no ground truth added): which of them to train on.

    Returns ``(indices (B,), labels (B,), regression targets (B, 4))``, foreground first.
    """
    # an image without objects: every box has IoU 0 (one all-zero row; Matcher refuses an empty matrix)
    iou = box_iou(gt_boxes.to(boxes), boxes) if len(gt_boxes) else boxes.new_zeros((1, len(boxes)))
    # Matcher(high, low): >= 0 matched at IoU >= fg_iou, BETWEEN_THRESHOLDS in [bg_iou[0], fg_iou), below ignored
    best = Matcher(fg_iou, min(bg_iou[0], fg_iou))(iou) if len(boxes) else iou.new_zeros(0, dtype=torch.long)
    best_iou = iou.max(dim=0).values
    fg = torch.where(best >= 0)[0] if len(gt_boxes) else best.new_zeros(0)
    bg = torch.where((best == Matcher.BETWEEN_THRESHOLDS) & (best_iou < bg_iou[1]))[0]
    if len(bg) == 0 and len(fg) == 0:  # nothing in the background band: fall back to any non-object box
        bg = torch.where(best_iou < fg_iou)[0]
    num_fg = min(int(round(batch_size * fg_fraction)), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator, device="cpu")[:num_fg].to(fg.device)]
    num_bg = min(batch_size - num_fg, len(bg))
    bg = bg[torch.randperm(len(bg), generator=generator, device="cpu")[:num_bg].to(bg.device)]
    keep = torch.cat([fg, bg])
    labels = torch.zeros(len(keep), dtype=torch.long, device=boxes.device)
    targets = torch.zeros((len(keep), 4), dtype=boxes.dtype, device=boxes.device)
    if num_fg:
        labels[:num_fg] = gt_labels.to(labels.device)[best[fg]]
        targets[:num_fg] = encode_boxes(gt_boxes.to(boxes)[best[fg]], boxes[fg])
    return keep, labels, targets


def detection_loss(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor, beta: float = 1.0, regress: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's multi-task loss (Eq. 1): softmax log loss over K + 1 classes plus the smooth-L1 loss of
    the true class's box deltas on foreground RoIs ([u >= 1]), averaged over all RoIs (lambda = 1).
    ``regress`` (bool, per RoI) narrows the regressed RoIs to a subset of the foreground (R-CNN's IoU >= 0.6)."""
    if labels.numel() == 0:  # a batch without any RoI: nothing to learn from (cross-entropy would give NaN)
        zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0  # still in the graph, for DDP
        return zero, zero.clone()
    cls_loss = F.cross_entropy(class_logits, labels)
    regress = labels > 0 if regress is None else regress & (labels > 0)
    fg = torch.where(regress)[0]
    deltas = box_regression.reshape(len(box_regression), -1, 4)[fg, labels[fg]]
    box_loss = F.smooth_l1_loss(deltas, targets[fg], beta=beta, reduction="sum") / max(1, labels.numel())
    return cls_loss, box_loss


def postprocess_detections(scores: torch.Tensor, box_regression: torch.Tensor | None, boxes: torch.Tensor,
                           image_size: tuple[int, int], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                           detections_per_img: int = 100, min_size: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-class detections for one image: ``scores`` ``(N, K + 1)`` (column 0 background), class-specific
    deltas ``(N, (K + 1) * 4)`` applied to ``boxes`` (or the boxes as they are when ``None``), clipped to the
    image, thresholded, then non-maximum suppression per class (``batched_nms``) and the top
    ``detections_per_img``. Returns ``{"boxes", "scores", "labels"}`` with labels in 1..K."""
    # under bf16 autocast the head's outputs are bfloat16, whose 8-bit mantissa puts a coordinate near 500 on
    # a 2 px grid: decode, clip and rank in float32
    scores, boxes = scores.float(), boxes.float()
    box_regression = None if box_regression is None else box_regression.float()
    num_classes = scores.shape[1]
    if box_regression is not None:
        per_class = decode_boxes(box_regression, boxes)
    else:
        per_class = boxes[:, None, :].expand(-1, num_classes, 4)
    per_class = clip_boxes_to_image(per_class.reshape(-1, 4), image_size).reshape(-1, num_classes, 4)
    labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
    per_class, scores, labels = per_class[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
    keep = torch.where(scores > score_thresh)[0]
    per_class, scores, labels = per_class[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(per_class, min_size)
    per_class, scores, labels = per_class[keep], scores[keep], labels[keep]
    keep = batched_nms(per_class, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": per_class[keep], "scores": scores[keep], "labels": labels[keep]}
