"""Box coding, Fast R-CNN sampling, R-CNN context warping, per-class NMS, frozen BN and unused parameters."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, box_iou

from densecnn import create_backbone
from densecnn.heads.detection import (ConvWindowHead, context_boxes, decode_boxes, encode_boxes,
                                      freeze_batchnorm, freeze_unused_parameters, postprocess_detections,
                                      sample_indices, sample_rois, warp_regions, window_grid)


def test_encode_decode_roundtrip_and_formula():
    proposals = torch.tensor([[10., 10, 50, 30], [0, 0, 8, 8]])
    gt = torch.tensor([[12., 8, 55, 33], [1, 1, 9, 12]])
    t = encode_boxes(gt, proposals)
    # R-CNN appendix C: t_x = (Gx - Px) / Pw, weighted by 10; t_w = log(Gw / Pw), weighted by 5
    assert torch.isclose(t[0, 0], torch.tensor(10 * (33.5 - 30) / 40))
    assert torch.isclose(t[0, 2], 5 * torch.log(torch.tensor(43 / 40)))
    decoded = decode_boxes(t.repeat(1, 3), proposals)  # the same deltas for three classes
    assert decoded.shape == (2, 3, 4)
    torch.testing.assert_close(decoded[:, 2], gt)


def test_sample_rois_foreground_fraction_and_bands():
    torch.manual_seed(0)
    gt = torch.tensor([[20., 20, 60, 60]])
    xy = torch.rand(500, 2) * 80
    proposals = torch.cat([xy, xy + torch.rand(500, 2) * 40 + 5], 1)
    proposals = torch.cat([proposals, gt + torch.randn(40, 4) * 2])  # plenty of foreground candidates
    rois, labels, targets = sample_rois(proposals, gt, torch.tensor([3]), batch_size=64, fg_fraction=0.25)
    iou = box_iou(rois, gt)[:, 0]
    fg = labels > 0
    assert len(rois) == 64 and int(fg.sum()) == 16  # 25% foreground
    assert (labels[fg] == 3).all() and (iou[fg] >= 0.5).all()
    assert (iou[~fg] < 0.5).all() and (iou[~fg] >= 0.1).all()
    assert (targets[~fg] == 0).all()
    # an image without objects: only background
    rois, labels, _ = sample_rois(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), batch_size=32)
    assert len(rois) == 32 and (labels == 0).all()


def test_sample_indices_picks_from_fixed_boxes():
    """OverFeat samples score-map windows: indices into the boxes given, no ground truth added."""
    torch.manual_seed(0)
    windows = window_grid(9, 9, 4, 32)  # the windows of a 64 x 64 image
    gt, gt_labels = torch.tensor([[10., 12, 40, 44]]), torch.tensor([2])
    keep, labels, targets = sample_indices(windows, gt, gt_labels, batch_size=40, fg_fraction=0.25, bg_iou=(0.0, 0.5))
    iou = box_iou(windows[keep], gt)[:, 0]
    fg = labels > 0
    assert len(keep) == 40 and len(set(keep.tolist())) == 40 and int(fg.sum()) == 10
    assert fg[:10].all() and (labels[fg] == 2).all() and (iou[fg] >= 0.5).all() and (iou[~fg] < 0.5).all()
    torch.testing.assert_close(targets[fg], encode_boxes(gt.expand(10, 4), windows[keep[fg]]))
    # the same draw as sample_rois without the ground truth among the candidates
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    rois, rl, _ = sample_rois(windows, gt, gt_labels, batch_size=40, add_gt=False, generator=g1)
    keep, kl, _ = sample_indices(windows, gt, gt_labels, batch_size=40, generator=g2)
    torch.testing.assert_close(rois, windows[keep])
    assert torch.equal(rl, kl)


def test_context_boxes_leave_sixteen_pixels_after_warping():
    box = torch.tensor([[100., 50, 200, 250]])
    dilated = context_boxes(box, crop_size=227, context=16)
    # once the dilated box is warped to 227 px, the original spans 227 - 2 * 16 = 195 px in each direction
    scale_x = 227 / (dilated[0, 2] - dilated[0, 0])
    assert torch.isclose((box[0, 2] - box[0, 0]) * scale_x, torch.tensor(195.0))
    assert torch.isclose((box[0, 0] - dilated[0, 0]) * scale_x, torch.tensor(16.0))


def test_warp_regions_crops_the_right_pixels():
    image = torch.zeros(1, 1, 40, 40)
    image[0, 0, 10:20, 5:15] = 1.0
    crops = warp_regions(image, [torch.tensor([[5., 10, 15, 20], [25, 25, 35, 35]])], size=8)
    assert crops.shape == (2, 1, 8, 8)
    # bilinear sampling: the interior is the object, the rim mixes in a little of the outside pixels
    assert crops[0, :, 1:-1, 1:-1].min() > 0.99 and crops[0].min() > 0.5 and crops[1].max() < 0.01


def test_postprocess_per_class_nms():
    boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]])
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7]])  # background, class 1, class 2
    out = postprocess_detections(scores, None, boxes, (32, 32), score_thresh=0.05, nms_thresh=0.5)
    # the two overlapping class-1 boxes merge; the class-2 box on the same place survives (per-class NMS)
    assert sorted(out["labels"].tolist()) == [1, 2]
    assert torch.isclose(out["scores"].max(), torch.tensor(0.9))


def test_window_grid_and_conv_head_shapes():
    windows = window_grid(2, 3, stride=4, window=32)
    assert windows.tolist()[4] == [4.0, 4.0, 36.0, 36.0]
    head = ConvWindowHead(in_channels=8, window=3, num_classes=5, hidden=16)
    scores, deltas = head(torch.randn(2, 8, 3, 3))
    assert scores.shape == (2, 6, 1, 1) and deltas.shape == (2, 20, 1, 1)
    scores, deltas = head(torch.randn(1, 8, 7, 9))
    assert scores.shape == (1, 6, 5, 7)


def test_freeze_batchnorm_keeps_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(0.5)
    model[1].running_var.fill_(2.0)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    freeze_batchnorm(model)
    assert isinstance(model[1], FrozenBatchNorm2d)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_freeze_unused_parameters():
    backbone = create_backbone("lenet5", num_classes=0, in_chans=3)
    unused = freeze_unused_parameters(backbone, [1], in_chans=3, size=32)  # S4: C5 and F6 are not needed
    assert set(unused) == {"c5.weight", "c5.bias", "f6.weight", "f6.bias"}
    assert backbone.c3.weight.requires_grad and not backbone.f6.weight.requires_grad


def test_freeze_unused_parameters_when_the_used_maps_are_already_frozen():
    """trainable_stages can freeze everything a detector's map depends on: the rest is then unused, not an
    autograd error."""
    backbone = create_backbone("lenet5", num_classes=0, in_chans=3)
    for module in (backbone.c1, backbone.c3):
        module.requires_grad_(False)
    unused = freeze_unused_parameters(backbone, [1], in_chans=3, size=32)
    assert set(unused) == {"c5.weight", "c5.bias", "f6.weight", "f6.bias"}
    assert not any(p.requires_grad for p in backbone.parameters())


def test_detection_loss_of_a_batch_without_rois_is_zero_and_backpropagates():
    from densecnn.heads.detection.boxes import detection_loss

    logits = torch.zeros(0, 4, requires_grad=True)
    deltas = torch.zeros(0, 16, requires_grad=True)
    cls_loss, box_loss = detection_loss(logits, deltas, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
    assert cls_loss.item() == 0.0 and box_loss.item() == 0.0
    (cls_loss + box_loss).backward()
    assert logits.grad is not None and deltas.grad is not None
