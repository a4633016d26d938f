"""Faster R-CNN's defaults are the papers': 3 scales x 3 ratios = 9 anchors per location on the C4 map (Ren et
al. §3.1.1: 128, 256, 512 px at 1:2, 1:1, 2:1), 2000 / 300 proposals after NMS in training / test, and the COCO
recipe keeps 12000 anchors before the RPN's NMS in training."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detection"


def test_default_layout_has_nine_anchors_per_location_of_the_papers_shapes():
    from tasks import FasterRCNNTask

    task = FasterRCNNTask(backbone="resnet18", backbone_kwargs={"widths": [8, 16, 32, 64]}, num_classes=2)
    assert task.hparams.box_head == "last_stage" and not task.hparams.fpn
    generator = task.detector.rpn.anchor_generator
    assert generator.num_anchors_per_location() == [9]
    assert task.detector.rpn.head.cls_logits.out_channels == 9 and task.detector.rpn.head.bbox_pred.out_channels == 36
    anchors = generator.cell_anchors[0] if generator.cell_anchors else \
        generator.generate_anchors(generator.sizes[0], generator.aspect_ratios[0])
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    # hand computation: area s^2, height / width = r, so width s / sqrt(r) and height s * sqrt(r)
    for width, height, (ratio, size) in zip(widths.tolist(), heights.tolist(),
                                            itertools.product((0.5, 1.0, 2.0), (128, 256, 512))):
        assert abs(width - size / math.sqrt(ratio)) <= 1.0 and abs(height - size * math.sqrt(ratio)) <= 1.0
    assert torch.allclose((anchors[:, :2] + anchors[:, 2:]) / 2, torch.zeros(9, 2), atol=0.5)  # centred on the cell
    rpn = task.detector.rpn
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 300}


def test_coco_recipe_uses_the_papers_rpn_counts():
    init = yaml.safe_load((CONFIGS / "coco_faster_rcnn_resnet101.yaml").read_text())["model"]["init_args"]
    assert init["rpn_pre_nms_top_n_train"] == 12000 and init["rpn_post_nms_top_n_train"] == 2000
    assert init["rpn_post_nms_top_n_test"] == 300
    assert len(init["anchor_sizes"]) * len(init["aspect_ratios"]) == 12  # 4 scales on COCO (64 px added)
