"""Detector exports (``tasks.detection.export``): each ONNX graph run in onnxruntime against eager PyTorch, and
what a caller rebuilds from it (the documented OverFeat decoding, the region graphs' post-processing) against
the task's own ``detect``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densecnn.export import export_spec_to, verify_export

ort = pytest.importorskip("onnxruntime")

SMALL = {"backbone": "resnet18", "backbone_kwargs": {"widths": [8, 16, 32, 64]}, "num_classes": 3}
SIZE = 64


class Data:
    """What the export reads from a DataModule: the square side and the normalisation."""

    image_size = SIZE
    mean = (0.5, 0.4, 0.3)
    std = (0.2, 0.25, 0.3)


def export_onnx(spec, path):
    """The spec through ``densecnn.export`` (the TorchScript-based exporter, as ``spec.exporter`` asks), verified
    against eager on its example inputs; an onnxruntime session on the file."""
    assert spec.exporter == "legacy"
    written = export_spec_to(spec, path.parent / path.stem, fmt="onnx")
    assert verify_export(written, spec) <= max(spec.atol, 1e-3)
    return ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])


def run_both(spec, session, inputs):
    with torch.no_grad():
        eager = spec.module(*inputs)
    eager = [eager] if isinstance(eager, torch.Tensor) else list(eager)
    onnx = session.run(None, {name: x.numpy() for name, x in zip(spec.input_names, inputs)})
    return [e.numpy() for e in eager], onnx


def normalised(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(Data.mean).reshape(3, 1, 1), torch.tensor(Data.std).reshape(3, 1, 1)
    return (image - mean) / std


def spread_scores(layer: torch.nn.Module) -> None:
    """Scale a fresh classifier's weights (std 0.01) so that class scores differ well beyond float noise: the
    detections of an untrained net then have distinct scores and a stable order."""
    with torch.no_grad():
        layer.weight.mul_(300)
        layer.bias.copy_(torch.linspace(-1, 1, len(layer.bias)))


def assert_same_detections(got: dict, want: dict, atol: float = 1e-3) -> None:
    assert len(want["boxes"]) > 0, "the comparison needs detections"
    assert len(got["boxes"]) == len(want["boxes"])
    np.testing.assert_array_equal(np.asarray(got["labels"]), np.asarray(want["labels"]))
    np.testing.assert_allclose(np.asarray(got["scores"]), np.asarray(want["scores"]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(got["boxes"]), np.asarray(want["boxes"]), atol=atol)


# ---- Faster R-CNN -----------------------------------------------------------------------------------------
def test_faster_rcnn_one_image_to_boxes_in_onnxruntime(tmp_path):
    """One call from a [0, 1] image of any size to boxes: onnxruntime equals eager on the traced size and on
    another one (the in-graph resize), and eager equals the task's ``detect`` on the pipeline's own input."""
    from tasks import FasterRCNNTask

    torch.manual_seed(0)
    task = FasterRCNNTask(**SMALL, box_head="mlp", feature_index=1, mlp_dim=16, anchor_sizes=[16, 32, 64],
                          rpn_post_nms_top_n_test=50).eval()
    spread_scores(task.detector.roi_heads.box_predictor.cls_score)
    spec = task.export_spec(datamodule=Data())
    assert spec.preprocess["image_size"] == SIZE and spec.preprocess["mean"] == list(Data.mean)
    assert spec.example_inputs[0].shape == (3, SIZE * 3 // 4, SIZE)
    session = export_onnx(spec, tmp_path / "faster_rcnn.onnx")
    generator = torch.Generator().manual_seed(1)
    for image in (spec.example_inputs[0], torch.rand(3, 40, 50, generator=generator)):  # the second is resized
        eager, onnx = run_both(spec, session, (image,))
        assert_same_detections(dict(zip(["boxes", "labels", "scores"], onnx)),
                               dict(zip(["boxes", "labels", "scores"], eager)))
        assert (onnx[0][:, 2] <= image.shape[2] + 1e-3).all() and (onnx[0][:, 3] <= image.shape[1] + 1e-3).all()
    # at the pipeline's size (no resize) the graph is the task's detector on the normalised image
    image = torch.rand(3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        want = task.detect(normalised(image)[None], {"image_size": torch.tensor([[SIZE, SIZE]])})[0]
    eager, onnx = run_both(spec, session, (image,))
    assert_same_detections(dict(zip(["boxes", "labels", "scores"], onnx)), want)


# ---- OverFeat ---------------------------------------------------------------------------------------------
def decode_overfeat(maps: list[np.ndarray], decoding: dict, image_size: int, score_thresh: float,
                    nms_thresh: float, detections_per_img: int) -> dict[str, torch.Tensor]:
    """preprocess.json's window decoding, written from its text (numpy): cell -> window box per ratio and scale,
    class-specific deltas with weights (10, 10, 5, 5), clip, threshold, per-class NMS across scales."""
    from torchvision.ops import batched_nms

    stride, window, ratios = decoding["stride"], decoding["window"], decoding["ratios"]
    wx, wy, ww, wh = decoding["box_weights"]
    clamp = math.log(1000.0 / 16)
    all_boxes, all_scores, all_labels = [], [], []
    for f, probs, deltas in zip(decoding["scales"], maps[0::2], maps[1::2]):
        _, num_ratios, classes, rows, cols = probs.shape  # batch of one
        for a, r in enumerate(ratios):
            i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            cx, cy = (j * stride + window / 2) / f, (i * stride + window / 2) / f
            w, h = window / math.sqrt(r) / f * np.ones_like(cx), window * math.sqrt(r) / f * np.ones_like(cx)
            for k in range(1, classes):
                dx, dy, dw, dh = deltas[0, a, k - 1]
                x, y = cx + dx / wx * w, cy + dy / wy * h
                bw, bh = w * np.exp(np.minimum(dw / ww, clamp)), h * np.exp(np.minimum(dh / wh, clamp))
                boxes = np.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], -1).reshape(-1, 4)
                all_boxes.append(np.clip(boxes, 0, image_size))
                all_scores.append(probs[0, a, k].reshape(-1))
                all_labels.append(np.full(rows * cols, k))
    boxes = torch.tensor(np.concatenate(all_boxes), dtype=torch.float32)
    scores = torch.tensor(np.concatenate(all_scores), dtype=torch.float32)
    labels = torch.tensor(np.concatenate(all_labels))
    keep = (scores > score_thresh) & ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def test_overfeat_maps_in_onnxruntime_decode_to_the_tasks_detections(tmp_path):
    from tasks import OverFeatTask

    torch.manual_seed(0)
    task = OverFeatTask(**SMALL, feature_index=2, window=32, scales=[1.0, 1.5], window_ratios=[0.5, 1.0, 2.0],
                        hidden_dim=16, detections_per_img=20).eval()
    spread_scores(task.head.cls_score)
    spec = task.export_spec(datamodule=Data())
    decoding = spec.preprocess["decoding"]
    assert decoding["scales"] == [1.0, 1.5] and decoding["stride"] == 8 and decoding["window"] == 32
    session = export_onnx(spec, tmp_path / "overfeat.onnx")
    images = torch.cat([spec.example_inputs[0], torch.rand(1, 3, SIZE, SIZE)])  # another batch size (dynamic)
    eager, onnx = run_both(spec, session, (images,))
    assert [o.shape for o in onnx] == [e.shape for e in eager]
    assert onnx[0].shape == (3, 3, 4, 5, 5) and onnx[1].shape == (3, 3, 3, 4, 5, 5)  # (64 - 32) / 8 + 1 cells
    for e, o in zip(eager, onnx):
        np.testing.assert_allclose(o, e, atol=1e-4, rtol=1e-4)
    h = task.hparams
    with torch.no_grad():
        want = task.detect(normalised(images[:1]), {"image_size": torch.tensor([[SIZE, SIZE]])})[0]
    got = decode_overfeat([o[:1] for o in onnx], decoding, SIZE, h.score_thresh, h.nms_thresh, h.detections_per_img)
    assert_same_detections(got, want)


# ---- Fast R-CNN and R-CNN ---------------------------------------------------------------------------------
def region_task(name: str):
    from tasks import FastRCNNTask, RCNNTask

    if name == "rcnn_softmax":
        task = RCNNTask(**SMALL, crop_size=32, context=4)
    elif name == "rcnn_svm":
        task = RCNNTask(**SMALL, crop_size=32, context=4, classifier="svm")
    else:
        task = FastRCNNTask(**SMALL, feature_index=1, roi_op=name.rsplit("_", 1)[1], roi_size=4, hidden_dim=16)
    head = getattr(task, "predictor", None) or task.box_head.predictor
    spread_scores(head.cls_score)
    if getattr(task, "svm", None) is not None:
        spread_scores(task.svm)
    return task.eval()


@pytest.mark.parametrize("name", ["fast_rcnn_pool", "fast_rcnn_align", "rcnn_softmax", "rcnn_svm"])
def test_region_networks_take_rois_and_match_detect(name, tmp_path):
    """Images + explicit RoIs -> per-RoI probabilities and deltas: onnxruntime equals eager (other RoI counts and
    a batch of two too), and the task's post-processing of the ORT outputs gives ``detect``'s detections."""
    from densecnn.heads.detection import postprocess_detections

    torch.manual_seed(0)
    task = region_task(name)
    spec = task.export_spec(datamodule=Data())
    assert spec.input_names == ["images", "rois"] and spec.output_names == ["probs", "deltas"]
    session = export_onnx(spec, tmp_path / f"{name}.onnx")
    images, rois = spec.example_inputs
    eager, onnx = run_both(spec, session, (images, rois))
    assert onnx[0].shape == (len(rois), 4) and onnx[1].shape == (len(rois), 16)
    for e, o in zip(eager, onnx):
        np.testing.assert_allclose(o, e, atol=1e-4, rtol=1e-4)
    # export_onnx ran the export command's check (verify_export: the example, then one more image and RoI)
    # other sizes: five RoIs over a batch of three images
    three = torch.cat([images, torch.rand(1, 3, SIZE, SIZE)])
    few = torch.tensor([[0, 2, 3, 40, 50], [1, 10, 10, 60, 30], [2, 0, 0, 63, 63], [0, 20, 5, 35, 60],
                        [2, 30.5, 12.25, 50, 41]])
    eager, onnx = run_both(spec, session, (three, few))
    for e, o in zip(eager, onnx):
        np.testing.assert_allclose(o, e, atol=1e-4, rtol=1e-4)
    # the caller's post-processing (preprocess.json's rule, the task's function) gives detect's detections
    h = task.hparams
    first = rois[:, 0] == 0  # the first image's RoIs
    with torch.no_grad():
        batch = {"image": normalised(images[:1]), "image_size": torch.tensor([[SIZE, SIZE]]),
                 "proposals": [rois[first, 1:]]}
        want = task.detect(batch["image"], batch)[0]
    rois = rois[first]
    probs, deltas = session.run(None, {"images": images[:1].numpy(), "rois": rois.numpy()})
    got = postprocess_detections(torch.tensor(probs), torch.tensor(deltas), rois[:, 1:], (SIZE, SIZE),
                                 score_thresh=h.score_thresh, nms_thresh=h.nms_thresh,
                                 detections_per_img=h.detections_per_img)
    assert_same_detections(got, want)
