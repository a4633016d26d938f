"""Every detector takes a training step under ``--trainer.precision bf16-mixed`` on CPU: the convolutions
really run in bfloat16 (autocast), and the loss and the updated weights are finite."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from densecnn.data.detection import (
    DetectionDataset,
    build_detection_pipeline,
    detection_collate,
    read_coco,
)


class _Record(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().float())


def _loader(root) -> DataLoader:
    records, _, _ = read_coco(root / "annotations" / "instances_train.json", root / "train")
    rng = np.random.default_rng(0)
    # proposals for R-CNN / Fast R-CNN: each object jittered, and random boxes (selective search is not the point)
    proposals = {}
    for r in records[:2]:
        jitter = r.boxes + rng.uniform(-4, 4, r.boxes.shape).astype(np.float32)
        corners = rng.uniform(0, 48, (8, 2)).astype(np.float32)
        proposals[str(r.image_id)] = np.concatenate([r.boxes, jitter, np.concatenate([corners, corners + 40], 1)])
    dataset = DetectionDataset(records[:2], build_detection_pipeline(96, train=False), proposals=proposals)
    return DataLoader(dataset, batch_size=2, collate_fn=detection_collate)


def _task(name: str):
    from tasks import FasterRCNNTask, FastRCNNTask, OverFeatTask, RCNNTask

    small = {"backbone": "resnet18", "backbone_kwargs": {"widths": [8, 16, 32, 64]}, "num_classes": 3,
             "optimizer": "sgd", "lr": 0.01}
    if name == "rcnn":
        return RCNNTask(crop_size=32, context=4, rois_per_image=8, classifier="svm", **small)
    if name == "fast_rcnn":
        return FastRCNNTask(feature_index=1, roi_op="pool", roi_size=4, hidden_dim=16, rois_per_image=8, **small)
    if name == "overfeat":
        return OverFeatTask(feature_index=2, window=32, scales=[1.0, 1.5], hidden_dim=16, windows_per_image=16, **small)
    return FasterRCNNTask(box_head="last_stage", anchor_sizes=[16, 32, 64], rpn_pre_nms_top_n_train=200,
                          rpn_post_nms_top_n_train=50, box_batch_size_per_image=16, **small)


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn", "overfeat", "faster_rcnn"])
def test_bf16_mixed_training_step(name, coco_root, tmp_path):
    torch.manual_seed(0)
    task = _task(name)
    conv_dtypes = []
    first_conv = next(m for m in task.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, args, out: conv_dtypes.append(out.dtype))
    before = {k: v.clone() for k, v in task.state_dict().items() if v.is_floating_point()}
    record = _Record()
    trainer = pl.Trainer(precision="bf16-mixed", accelerator="cpu", devices=1, max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[record],
                         default_root_dir=tmp_path)
    trainer.fit(task, train_dataloaders=_loader(coco_root))
    assert conv_dtypes and conv_dtypes[0] == torch.bfloat16  # autocast really ran the backbone in bf16
    assert len(record.losses) == 1 and torch.isfinite(record.losses[0]) and record.losses[0] > 0
    after = task.state_dict()
    assert all(torch.isfinite(after[k]).all() for k in before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed  # the step updated the weights
    assert all(after[k].dtype == before[k].dtype for k in before)  # mixed precision: float32 master weights


def test_bf16_keeps_faster_rcnn_anchors_and_proposals_in_float32():
    """Under bf16 autocast the RPN's boxes stay exact: with zero regression deltas every proposal is an anchor
    (clipped to the image) to float32 precision; bfloat16's 8-bit mantissa would move a 22.6 px anchor side at
    x ~ 100 by up to 0.25 px (torchvision makes anchors in the maps' dtype and decodes in the deltas')."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou, clip_boxes_to_image

    from tasks import FasterRCNNTask

    torch.manual_seed(0)
    task = FasterRCNNTask(backbone="resnet18", backbone_kwargs={"widths": [8, 16, 32, 64]}, num_classes=3,
                          box_head="mlp", feature_index=1, mlp_dim=16, anchor_sizes=[16, 23, 64],
                          aspect_ratios=[0.5, 1.0, 2.0], rpn_pre_nms_top_n_test=4000, rpn_post_nms_top_n_test=4000,
                          rpn_nms_thresh=1.0, score_thresh=0.0).eval()
    with torch.no_grad():
        task.detector.rpn.head.bbox_pred.weight.zero_()
        task.detector.rpn.head.bbox_pred.bias.zero_()
    proposals = []
    task.detector.rpn.register_forward_hook(lambda module, args, out: proposals.append(out[0][0]))
    images = torch.randn(1, 3, 112, 112)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = task.detect(images, {"image_size": torch.tensor([[112, 112]])})
    features = task.detector.backbone(images)
    anchors = task.detector.rpn.anchor_generator(ImageList(images, [(112, 112)]), list(features.values()))[0]
    anchors = clip_boxes_to_image(anchors, (112, 112))
    assert proposals[0].dtype == torch.float32 and detections[0]["boxes"].dtype == torch.float32
    # each proposal is (to float32 rounding) one of the float32 anchors
    nearest = (proposals[0][:, None, :] - anchors[None]).abs().amax(dim=2).min(dim=1).values
    assert nearest.max() < 1e-4
    assert box_iou(proposals[0], anchors).max(dim=1).values.min() > 0.9999


def test_bf16_fast_rcnn_pools_with_float32_rois(monkeypatch):
    """RoI coordinates reach roi_align/roi_pool in float32 under bf16 autocast (bfloat16 would snap 93.7 to 93.5)."""
    from tasks import FastRCNNTask
    from tasks.detection import fast_rcnn

    seen = []
    for op in ("roi_align", "roi_pool"):
        original = getattr(fast_rcnn, op)

        def spy(features, rois, *args, _original=original, **kwargs):
            seen.append((features.dtype, rois[0].dtype, rois[0][0, 0].item()))
            return _original(features, rois, *args, **kwargs)

        monkeypatch.setattr(fast_rcnn, op, spy)
        task = FastRCNNTask(backbone="lenet5", backbone_kwargs={"in_chans": 3}, num_classes=3, feature_index=1,
                            roi_op=op.split("_")[1], roi_size=2, hidden_dim=8)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = task.pooled_rois(torch.randn(1, 3, 128, 128), [torch.tensor([[93.7, 10.0, 120.0, 50.0]])])
        assert torch.isfinite(pooled).all()
    assert [(f, r) for f, r, _ in seen] == [(torch.float32, torch.float32)] * 2
    assert all(x == pytest.approx(93.7, abs=1e-5) for _, _, x in seen)


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn", "overfeat"])
def test_bf16_detections_are_decoded_in_float32(name):
    """At test under bf16 autocast the boxes come back in float32 and exact: with the box regressor zeroed,
    R-CNN's and Fast R-CNN's detections are their proposals to float32 precision (bfloat16 would put 93.7 on 93.5)."""
    torch.manual_seed(0)
    task = _task(name).eval()
    task.hparams.score_thresh = 0.0
    regressor = {"rcnn": lambda: task.predictor, "fast_rcnn": lambda: task.box_head.predictor,
                 "overfeat": lambda: task.head}[name]().bbox_pred
    with torch.no_grad():
        regressor.weight.zero_()
        regressor.bias.zero_()
    proposal = torch.tensor([[93.7, 10.3, 120.1, 50.9]])
    batch = {"image": torch.randn(1, 3, 128, 128), "image_size": torch.tensor([[128, 128]]), "proposals": [proposal]}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = task.detect(batch["image"], batch)[0]
    assert detections["boxes"].dtype == torch.float32 and detections["scores"].dtype == torch.float32
    assert len(detections["boxes"]) > 0
    if name != "overfeat":
        assert torch.allclose(detections["boxes"], proposal.expand_as(detections["boxes"]), atol=1e-5)
