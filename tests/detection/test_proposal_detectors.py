"""R-CNN and Fast R-CNN on the paths real users take: non-square photos (boxes stay inside the image), Fast
R-CNN starting from the pre-trained classifier's fc6/fc7 and its truncated SVD, R-CNN's chunked warping, SVM
training set and box-regression threshold, and batches without any region."""
from __future__ import annotations

import json
import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import roi_pool

from densecnn.heads.detection import RoIBoxHead, encode_boxes
from densecnn.heads.detection.heads import truncated_svd_linear
from tasks import FastRCNNTask, RCNNTask
from tasks.datamodules.detection import VOCDetectionDataModule
from tests.detection.helpers import write_voc

SMALL = {"backbone": "lenet5", "backbone_kwargs": {"in_chans": 3}, "num_classes": 2}


def small_detector(name: str, **kwargs):
    if name == "rcnn":
        return RCNNTask(**SMALL, crop_size=32, context=4, **kwargs)
    return FastRCNNTask(**SMALL, feature_index=1, roi_op="align", hidden_dim=32, **kwargs)


def box_predictor(task):
    return task.predictor if isinstance(task, RCNNTask) else task.box_head.predictor


# ---- boxes stay inside the image's content ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
@pytest.mark.parametrize("photo", [(100, 75), (60, 120)])  # (width, height): wide and tall
def test_boxes_stay_inside_a_non_square_photo(name, photo, tmp_path):
    """A 100x75 photo becomes 128x96 in a 128 px square (a 60x120 one 64x128): proposals along its right and
    bottom edges, regressed to twice their size, are clipped to the content (not the padded square), in
    network pixels, in the photo's pixels and in the predict path's detections.json."""
    width, height = photo
    root = write_voc(tmp_path / "VOC2007", {"a": [("dog", 0, (10, 10, 40, 40))]}, split="test", size=photo)
    proposals = {"a": [[0, 0, width, height], [width / 2, height / 2, width, height], [5, 5, 30, 30],
                       [width - 20, 0, width, height / 3], [0, height - 15, width / 3, height]]}
    (tmp_path / "proposals.json").write_text(json.dumps(proposals))
    dm = VOCDetectionDataModule(str(root), image_size=128, class_names=["cat", "dog"],
                                proposals=str(tmp_path / "proposals.json"))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    content_h, content_w = batch["image_size"][0].tolist()
    assert (content_w, content_h) == ((128, 96) if width > height else (64, 128))
    task = small_detector(name, score_thresh=0.0, nms_thresh=1.0).eval()
    with torch.no_grad():  # every box grows to e^1 its size and moves right/down by a fifth of it
        bias = box_predictor(task).bbox_pred.bias.view(-1, 4)
        bias.copy_(torch.tensor([2.0, 2.0, 5.0, 5.0]))
        detections = task.detect(batch["image"], batch)
    boxes = detections[0]["boxes"]
    assert len(boxes) == 2 * 5  # every proposal for both classes (no threshold, no suppression)
    assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
    assert boxes[:, 2].max() == content_w and boxes[:, 3].max() == content_h  # clipped right there
    original = task.to_original(detections, batch)[0]["boxes"]
    assert original[:, 2].max() <= width + 1e-4 and original[:, 3].max() <= height + 1e-4
    # the predict path: Trainer.predict and the COCO results file its prediction writer saves
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=str(tmp_path / "run"), logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(task, datamodule=dm)
    results = json.loads(next((tmp_path / "run").rglob("detections.json")).read_text())
    assert len(results) == 10
    for x, y, w, h in (r["bbox"] for r in results):
        assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01


# ---- Fast R-CNN: fc6/fc7 from the pre-trained classifier (Section 2.2) -----------------------------------
@pytest.mark.parametrize("name,roi_size,last_cell", [
    ("alexnet_torchvision", 6, 12),  # conv5 13x13 -> 3x3/2 max pool -> 6x6: RoI bins of 13/6 cells are those
    pytest.param("vgg11", 7, 13, marks=pytest.mark.slow),  # conv5 14x14 -> 2x2/2 max pool -> 7x7
])
def test_fast_rcnn_takes_fc6_fc7_from_a_torchvision_file(name, roi_size, last_cell, tmp_path):
    """fc6/fc7 are torchvision's classifier layers after loading its state_dict from a file, the backbone's
    own head is gone, and on the RoI covering the conv5 cells of a 224 px image (RoI max pooling is then
    exactly the network's last max pool) the detector's fc7 features are the classifier's (oracle:
    torchvision's model run on the same image up to fc7)."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name.split("_")[0])().eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    task = FastRCNNTask(backbone=name, weights=str(path), num_classes=3, roi_op="pool", roi_size=roi_size,
                        hidden_dim=4096).eval()
    fc6, fc7 = [m for m in reference.classifier if isinstance(m, torch.nn.Linear)][:2]
    torch.testing.assert_close(task.box_head.fc6.weight, fc6.weight, rtol=0, atol=0)
    torch.testing.assert_close(task.box_head.fc7.bias, fc7.bias, rtol=0, atol=0)
    assert not any(k.startswith("backbone.classifier") for k in task.state_dict())
    image = torch.randn(1, 3, 224, 224)
    # roi_pool's cells are inclusive (x2 = 16 * c px is cell c): this RoI spans cells 0..last_cell
    whole = torch.tensor([[0.0, 0.0, 16.0 * last_cell, 16.0 * last_cell]])
    with torch.no_grad():
        features = task.region_features(image, [whole])
        pool5 = reference.features(image)  # conv5 ReLU, then the last max pool
        expected = reference.classifier[:-1](torch.flatten(reference.avgpool(pool5), 1))  # up to fc7's ReLU
        pooled = roi_pool(task.backbone.feature_maps(image, [-1])[0], [whole], roi_size, 1 / 16)
    torch.testing.assert_close(pooled, pool5)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_fast_rcnn_says_where_fc6_fc7_come_from(caplog):
    caplog.set_level(logging.INFO)
    alexnet = FastRCNNTask(backbone="alexnet_torchvision", num_classes=2, roi_size=6, hidden_dim=4096)
    assert "fc6/fc7 initialised from the randomly initialised (weights: null) classifier of backbone " \
           "'alexnet_torchvision'" in caplog.text
    fcs = [m for m in torchvision.models.alexnet().classifier.modules() if isinstance(m, torch.nn.Linear)]
    assert alexnet.box_head.fc6.weight.shape == fcs[0].weight.shape
    caplog.clear()
    narrow = FastRCNNTask(backbone="alexnet_torchvision", num_classes=2, roi_size=6, hidden_dim=64)
    assert "do not match" in caplog.text and "initialised fresh" in caplog.text
    assert narrow.box_head.fc6.weight.shape == (64, 256 * 6 * 6)
    assert not any(k.startswith("backbone.classifier") for k in narrow.state_dict())  # no dead weight
    caplog.clear()
    FastRCNNTask(**SMALL, feature_index=1, hidden_dim=32)
    assert "has no fc6/fc7 classifier; fc6/fc7 are initialised fresh" in caplog.text


# ---- Fast R-CNN: truncated SVD (Section 3.1) -------------------------------------------------------------
def test_truncated_svd_full_rank_keeps_outputs_and_rank_t_is_the_best_approximation():
    torch.manual_seed(0)
    head = RoIBoxHead(in_channels=4, roi_size=3, num_classes=2, hidden=24).eval()
    pooled = torch.randn(5, 4, 3, 3)
    with torch.no_grad():
        before = head(pooled)
        head.compress_fc(36, 24)  # full rank of fc6 (24 x 36) and fc7 (24 x 24)
        after = head(pooled)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    layer = torch.nn.Linear(36, 24)
    compressed = truncated_svd_linear(layer, 5)
    first, second = compressed
    assert first.weight.shape == (5, 36) and first.bias is None and second.weight.shape == (24, 5)
    torch.testing.assert_close(second.bias, layer.bias)
    u, s, vh = torch.linalg.svd(layer.weight.detach())
    best = u[:, :5] @ torch.diag(s[:5]) @ vh[:5]  # Eckart-Young: the best rank-5 approximation
    torch.testing.assert_close(second.weight @ first.weight, best, rtol=1e-4, atol=1e-5)
    error = torch.linalg.matrix_norm(second.weight @ first.weight - layer.weight.detach())
    torch.testing.assert_close(error, s[5:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)


def test_fast_rcnn_compresses_fc6_fc7_when_tested():
    task = FastRCNNTask(**SMALL, feature_index=1, hidden_dim=32, svd_rank_fc6=8, svd_rank_fc7=4)
    assert isinstance(task.box_head.fc6, torch.nn.Linear)  # trained whole
    task.on_test_start()
    assert [m.weight.shape[0] for m in task.box_head.fc6] == [8, 32]
    assert [m.weight.shape[0] for m in task.box_head.fc7] == [4, 32]


# ---- R-CNN ----------------------------------------------------------------------------------------------
def test_rcnn_warps_chunk_by_chunk_in_training_and_at_test(monkeypatch):
    import tasks.detection.rcnn as rcnn

    sizes = []
    warp = rcnn.warp_regions

    def recording(images, boxes, size):
        crops = warp(images, boxes, size)
        sizes.append(len(crops))
        return crops

    monkeypatch.setattr(rcnn, "warp_regions", recording)
    torch.manual_seed(0)
    task = small_detector("rcnn", crop_batch_size=5, rois_per_image=16)
    xy = torch.rand(2, 23, 2) * 40
    batch = {"image": torch.randn(2, 3, 64, 64), "proposals": [torch.cat([p, p + 20], 1) for p in xy],
             "target": [{"boxes": torch.tensor([[5., 5, 30, 30]]), "labels": torch.tensor([1])}] * 2}
    task.training_losses(batch)
    assert max(sizes) == 5 and sum(sizes) == 2 * 16  # 32 warped windows, never more than 5 alive at once
    sizes.clear()
    # 32 regions by 31 are two equal chunks, not 31 + 1: a chunk of one is a batch of one for batch norm
    task.hparams.crop_batch_size = 31
    task.training_losses(batch)
    assert sizes == [16, 16]
    sizes.clear()
    task.hparams.crop_batch_size = 5
    task.eval()
    with torch.no_grad():
        chunked = task.region_features(batch["image"], batch["proposals"])
        assert max(sizes) == 5 and sum(sizes) == 46
        task.hparams.crop_batch_size = 1000
        whole = task.region_features(batch["image"], batch["proposals"])
    torch.testing.assert_close(chunked, whole)


def test_rcnn_svm_examples_by_hand():
    """Positives: the ground-truth boxes; negatives: proposals under 0.3 IoU with every object of the class."""
    from tasks.detection.rcnn import svm_examples

    gt = torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]])
    labels = torch.tensor([1, 2])
    proposals = torch.tensor([[0., 0, 10, 9],    # IoU 0.9 with the class-1 box
                              [0, 0, 10, 4],     # 0.4: neither for class 1
                              [0, 0, 10, 2],     # 0.2: a negative for class 1
                              [20, 20, 30, 30]])  # the class-2 box itself
    regions, positive, negative = svm_examples(proposals, gt, labels, num_classes=2, neg_iou=0.3)
    torch.testing.assert_close(regions, torch.cat([gt, proposals]))
    assert positive.tolist() == [[True, False], [False, True]] + [[False, False]] * 4
    assert negative.tolist() == [[False, False], [False, False],
                                 [False, True], [False, True], [True, True], [True, False]]


def test_rcnn_svm_hinge_loss_mines_the_hardest_negatives():
    from tasks.detection.rcnn import svm_hinge_loss

    scores = torch.tensor([[0.5], [-2.0], [0.0], [0.5], [-0.5]])
    positive = torch.tensor([[True], [False], [False], [False], [False]])
    negative = ~positive
    # one positive (hinge 1 - 0.5) and the 2 highest-scoring negatives (0.5, 0.0: hinges 1.5, 1.0)
    loss = svm_hinge_loss(scores, positive, negative, negatives_per_positive=2, min_negatives=1)
    torch.testing.assert_close(loss, torch.tensor(0.5 + (1.5 + 1.0) / 2))


def test_rcnn_svm_loss_uses_every_gt_box_and_every_proposal():
    """The SVM loss is the hinge loss over all regions of the image (oracle: test-mode features of the
    ground truth and all proposals), whatever few windows the fine-tuning sampled."""
    from tasks.detection.rcnn import svm_examples, svm_hinge_loss

    torch.manual_seed(0)
    task = small_detector("rcnn", classifier="svm", rois_per_image=2)
    xy = torch.rand(30, 2) * 40
    batch = {"image": torch.randn(1, 3, 64, 64), "proposals": [torch.cat([xy, xy + 20], 1)],
             "target": [{"boxes": torch.tensor([[5., 5, 30, 30], [30, 30, 60, 60]]),
                         "labels": torch.tensor([1, 2])}]}
    loss = task.training_losses(batch)["loss_svm"]
    regions, positive, negative = svm_examples(batch["proposals"][0], batch["target"][0]["boxes"],
                                               batch["target"][0]["labels"], 2)
    assert len(regions) == 32
    task.eval()
    with torch.no_grad():
        expected = svm_hinge_loss(task.svm(task.region_features(batch["image"], [regions])), positive, negative)
    torch.testing.assert_close(loss, expected)


def test_rcnn_box_regression_starts_at_iou_0_6():
    """Appendix C: only foreground windows with IoU >= 0.6 train the regressor (0.55 is foreground for the
    classifier but not regressed); oracle: the smooth-L1 sum over those windows, over all windows."""
    task = small_detector("rcnn", rois_per_image=8, fg_fraction=1.0)
    gt = torch.tensor([[0., 0, 20, 20]])
    proposals = torch.tensor([[0., 0, 20, 11], [0, 0, 20, 17]])  # IoU 0.55 and 0.85
    batch = {"image": torch.randn(1, 3, 32, 32), "proposals": [proposals],
             "target": [{"boxes": gt, "labels": torch.tensor([2])}]}
    rois, labels, targets, regress = task.sample_training_rois(batch)
    iou = torchvision.ops.box_iou(rois[0], gt)[:, 0]
    assert labels.tolist() == [2, 2, 2] and regress.tolist() == (iou >= 0.6).tolist() and int(regress.sum()) == 2
    assert task.hparams.bbox_reg_iou == 0.6
    with torch.no_grad():
        box_predictor(task).bbox_pred.weight.zero_()
        box_predictor(task).bbox_pred.bias.fill_(0.3)
        losses = task.training_losses(batch)
        deltas = torch.full((2, 4), 0.3)
        expected = F.smooth_l1_loss(deltas, encode_boxes(gt.expand(2, 4), rois[0][iou >= 0.6]), reduction="sum") / 3
    torch.testing.assert_close(losses["loss_box_reg"], expected)


@pytest.mark.parametrize("name,classifier", [("rcnn", "softmax"), ("rcnn", "svm"), ("fast_rcnn", None)])
def test_a_batch_without_any_region_gives_zero_losses_that_backpropagate(name, classifier):
    task = small_detector(name, **({"classifier": classifier} if classifier else {}))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    batch = {"image": torch.randn(2, 3, 48, 48), "proposals": [torch.zeros(0, 4)] * 2, "target": [empty] * 2}
    losses = task.training_losses(batch)
    total = sum(losses.values())
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in losses.values())
    total.backward()
    predictor = box_predictor(task)
    assert predictor.cls_score.weight.grad is not None
    assert float(predictor.cls_score.weight.grad.abs().sum()) == 0.0
    if name == "rcnn":  # the CNN ran on the (empty) batch of crops: its parameters are in the graph (DDP)
        assert all(p.grad is not None for p in task.backbone.parameters() if p.requires_grad)
