"""Every detector on non-square photos: the data pipeline pads each image to a square, and detections must
stay inside the image's content (``batch["image_size"]``), in network pixels and, after ``to_original``, in
the original image's pixels; Faster R-CNN's RPN proposes only inside the content."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data.detection import (
    DetectionDataset,
    DetectionRecord,
    build_detection_pipeline,
    detection_collate,
)

SIZE = 128
# (width, height): a landscape and a portrait photo, both padded to a 128 square at the bottom/right
PHOTOS = [(100, 75), (60, 120)]
SMALL = {"backbone": "lenet5", "backbone_kwargs": {"in_chans": 3}, "num_classes": 3, "score_thresh": 0.0,
         "detections_per_img": 300}


def _batch(root: Path) -> dict:
    rng = np.random.default_rng(0)
    records, proposals = [], {}
    for i, (width, height) in enumerate(PHOTOS):
        path = root / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        box = np.array([[width * 0.2, height * 0.2, width * 0.9, height * 0.95]], np.float32)
        records.append(DetectionRecord(i, str(path), width, height, boxes=box, labels=np.array([1]),
                                       iscrowd=np.array([0])))
        # proposals touching the right and bottom edges, where a widened box would leave the content
        proposals[str(i)] = np.array([[0, 0, width, height], [width / 2, height / 2, width, height],
                                      [width * 0.7, 0, width, height * 0.3], [0, height * 0.6, width * 0.4, height]],
                                     np.float32)
    dataset = DetectionDataset(records, build_detection_pipeline(SIZE, train=False), proposals=proposals)
    return detection_collate([dataset[i] for i in range(len(dataset))])


def _widen(layer: torch.nn.Module, weights: tuple[float, float, float, float]) -> None:
    """Make a box regressor output exactly 'triple the width and height' for every box (zero weights, the
    log-scale deltas in the bias): boxes near the content's edge then cross it unless they are clipped."""
    with torch.no_grad():
        layer.weight.zero_()
        bias = torch.tensor([0.0, 0.0, weights[2] * math.log(3), weights[3] * math.log(3)])
        layer.bias.copy_(bias.repeat(layer.bias.numel() // 4))


def _detector(name: str):
    from tasks import FasterRCNNTask, FastRCNNTask, OverFeatTask, RCNNTask

    fast = (10.0, 10.0, 5.0, 5.0)  # Fast R-CNN's target normalisation, ours and torchvision's RoI heads'
    if name == "rcnn":
        task = RCNNTask(crop_size=32, context=4, rois_per_image=16, **SMALL)
        _widen(task.predictor.bbox_pred, fast)
    elif name == "fast_rcnn":
        task = FastRCNNTask(feature_index=1, roi_op="align", hidden_dim=16, dropout=0.0, **SMALL)
        _widen(task.box_head.predictor.bbox_pred, fast)
    elif name == "overfeat":
        task = OverFeatTask(window=32, hidden_dim=16, dropout=0.0, **SMALL)
        _widen(task.head.bbox_pred, fast)
    else:
        task = FasterRCNNTask(box_head="mlp", feature_index=1, mlp_dim=16, anchor_sizes=[16, 32, 64],
                              frozen_bn=False, trainable_stages=None, rpn_pre_nms_top_n_test=500,
                              rpn_post_nms_top_n_test=100, **SMALL)
        _widen(task.detector.roi_heads.box_predictor.bbox_pred, fast)
        _widen(task.detector.rpn.head.bbox_pred, (1.0, 1.0, 1.0, 1.0))  # the RPN's coder has unit weights
    return task.eval()


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn", "overfeat", "faster_rcnn"])
def test_detections_stay_inside_the_image_content(name, tmp_path):
    batch = _batch(tmp_path)
    # the pipeline's padding: 100x75 -> 128x96 content, 60x120 -> 64x128 (height, width)
    assert batch["image_size"].tolist() == [[96, 128], [128, 64]]
    task = _detector(name)
    proposals = []
    if name == "faster_rcnn":
        task.detector.rpn.register_forward_hook(lambda module, args, out: proposals.append(out[0]))
    with torch.no_grad():
        detections = task.detect(batch["image"], batch)
    for d, (height, width) in zip(detections, batch["image_size"].tolist()):
        boxes = d["boxes"]
        assert len(boxes) > 0
        assert boxes.min() >= 0
        assert boxes[:, 2].max() <= width + 1e-4 and boxes[:, 3].max() <= height + 1e-4
        # the widened boxes reach the content's edge: clipped there, not at the padded square's
        assert boxes[:, 2].max() == pytest.approx(width) or boxes[:, 3].max() == pytest.approx(height)
    for d, (orig_h, orig_w) in zip(task.to_original(detections, batch), batch["orig_size"].tolist()):
        assert d["boxes"][:, 2].max() <= orig_w + 1e-3 and d["boxes"][:, 3].max() <= orig_h + 1e-3
    if name == "faster_rcnn":
        for boxes, (height, width) in zip(proposals[0], batch["image_size"].tolist()):
            assert len(boxes) > 0
            assert boxes[:, 2].max() <= width + 1e-4 and boxes[:, 3].max() <= height + 1e-4
            # the proposals left after clipping all have area inside the content (none wholly in the padding)
            assert (boxes[:, 0] < width).all() and (boxes[:, 1] < height).all()


def test_overfeat_trains_only_on_windows_over_the_content(tmp_path):
    """Windows lying wholly in the padding are neither scored nor sampled for training."""
    from tasks import OverFeatTask

    batch = _batch(tmp_path)
    task = OverFeatTask(window=32, hidden_dim=16, dropout=0.0, window_ratios=[1.0], **SMALL)
    _, _, boxes = task.pyramid_windows(batch["image"])
    height, width = batch["image_size"][1].tolist()  # the portrait: 64 px of content in 128
    inside = task.in_content(boxes, (height, width))
    # 32 px windows every 4 px: corners 0..96; those with x0 < 64 overlap the content (16 of 25 columns)
    assert len(boxes) == 25 * 25 and len(inside) == 25 * 16
    assert (boxes[inside, 0] < width).all() and (boxes[~torch.isin(torch.arange(len(boxes)), inside), 0] >= width).all()


def test_display_thresh_filters_pictures_not_results(tmp_path, monkeypatch):
    """``display_thresh`` decides what is drawn in the prediction pictures; every detection is still written."""
    from tasks import OverFeatTask
    from tasks.detection import base

    batch = _batch(tmp_path)
    drawn = []
    monkeypatch.setattr(base, "draw_detections", lambda image, boxes, *rest: drawn.append(len(boxes)) or image)
    import pytorch_lightning as pl

    task = OverFeatTask(window=32, hidden_dim=16, display_thresh=0.6, **SMALL)
    task.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    detection = {"boxes": torch.tensor([[1.0, 1, 20, 20], [5, 5, 30, 30], [2, 2, 9, 9]]),
                 "scores": torch.tensor([0.9, 0.59, 0.6]), "labels": torch.tensor([1, 2, 3])}
    records = task.prediction_records([detection, detection], batch, tmp_path / "out", 0)
    assert drawn == [2, 2] and len(records) == 6

