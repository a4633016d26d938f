"""What the four detectors export (``DetectionTask.export_spec``): one graph each, taking RGB images in [0, 1]
and normalising inside the graph, with ``preprocess.json`` facts for the caller.

  * Faster R-CNN: torchvision's own ONNX path (``GeneralizedRCNN`` with its ``GeneralizedRCNNTransform``,
    traced by the TorchScript-based exporter, opset >= 11): one image ``(3, H, W)`` of any size -> resize
    (longest side to ``image_size``), normalise, backbone, RPN, RoI heads, box decoding, per-class NMS ->
    ``boxes`` (xyxy, the input image's pixels), ``labels`` (1..K), ``scores``.
  * OverFeat: the sliding-window network as it is (Sermanet et al. 2014 §3.3-3.5): per pyramid scale a map
    of class probabilities and one of box deltas; the window decoding is data (``preprocess["decoding"]``).
  * Fast R-CNN and R-CNN: the per-RoI network, the proposals an explicit input ``rois`` ``(K, 5)``
    ``[batch index, x1, y1, x2, y2]`` in network-input pixels -> class probabilities and box deltas per RoI
    (RoI pooling, or R-CNN's context dilation and warping, inside the graph).

The three graphs with RoI pooling, NMS or data-dependent shapes go through the TorchScript-based exporter
(``exporter = "legacy"``): the dynamo exporter has no ONNX translation for torchvision's ``roi_pool`` and
cannot trace the detector's NMS-sized outputs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from densecnn.export.spec import ExportSpec
from densecnn.heads.detection import BOX_WEIGHTS

#: the detection DataModules' default square (``tasks.datamodules.detection.DetectionDataModule``)
DEFAULT_IMAGE_SIZE = 512
BOX_CLAMP = float(np.log(1000.0 / 16))  # torchvision's bbox_xform_clip, as ``decode_boxes`` uses


class Normalise(nn.Module):
    """``(x - mean) / std`` per channel, on RGB images in [0, 1] (what the data pipeline's ``Normalize`` does
    after its resize and padding)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).reshape(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).reshape(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# ---- what every detector's preprocess.json says ------------------------------------------------------------
def data_settings(task, datamodule=None) -> tuple[int, list[float], list[float], str]:
    """``(image_size, mean, std, where they came from)``: ``datamodule``'s (the config's ``data``), else the
    attached one's (the DataModule the task was fitted or tested with), else the detection DataModules'
    defaults (512 px, ImageNet statistics)."""
    if datamodule is None and task._trainer is not None:
        datamodule = getattr(task.trainer, "datamodule", None)
    size = getattr(datamodule, "image_size", None)
    if datamodule is not None and hasattr(datamodule, "mean"):
        mean, std = datamodule.mean, datamodule.std
    else:
        mean, std = task.normalisation()
    source = f"the DataModule ({type(datamodule).__name__})" if size is not None else (
        f"the detection DataModules' defaults ({DEFAULT_IMAGE_SIZE} px, ImageNet mean/std; no DataModule given)")
    return int(size or DEFAULT_IMAGE_SIZE), [float(m) for m in mean], [float(s) for s in std], source


def common_preprocess(task, image_size: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The ``preprocess.json`` entries every detection export shares (task, RGB in [0, 1], mean, std, classes).

    Args:
        task: the detection task.
        image_size: the padded square side the model was trained on.
        mean, std: the normalisation applied inside the graph.
    """
    return {
        "task": type(task).__name__,
        "channel_order": "RGB",
        "value_range": [0.0, 1.0],
        "layout": "CHW float32",
        "mean": list(mean),
        "std": list(std),
        "normalisation": "inside the graph: pass RGB values in [0, 1], not normalised ones",
        "image_size": image_size,
        "class_names": task.class_names,
        "category_ids": task.category_ids,
        "labels": "label k (1..K) is class_names[k - 1] (COCO category_ids[k - 1]); 0 is background",
        "box_format": "xyxy, pixels",
    }


def padded_resize_rule(image_size: int) -> str:
    """The resize-and-pad rule of the detection data pipeline, in words for ``preprocess.json``.

    Args:
        image_size: the padded square side.
    """
    return (f"resize the longest side to {image_size} px (bilinear, scale = {image_size} / max(h, w)), then pad at "
            f"the bottom and right with 0 (black) to {image_size} x {image_size}; divide output boxes by the "
            f"scale for the original image's pixels")


def example_image(image_size: int, seed: int = 0) -> torch.Tensor:
    """A real-looking ``(3, S, S)`` picture in [0, 1]: shapes on texture (the embedded detection data's
    generator), so a trained detector finds objects in the verification input."""
    from densecnn.data.synthetic.detection import DETECTION_CLASSES, render_detection_image

    image, _ = render_detection_image(np.random.default_rng(seed), image_size, DETECTION_CLASSES, 3, 0.0, 0.1, 0.3)
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255


def example_images(image_size: int) -> torch.Tensor:
    """Two ``example_image`` pictures ``(2, 3, S, S)``: a batch of two (torch.export specialises a batch of one)."""
    return torch.stack([example_image(image_size, seed) for seed in (0, 1)])


def example_rois(image_size: int, count: int = 12, seed: int = 0, images: int = 2) -> torch.Tensor:
    """``(count, 5)`` RoIs ``[batch index, x1, y1, x2, y2]`` inside an ``image_size`` square, of varied sizes,
    spread over ``images`` images."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * image_size * 0.6
    side = (0.15 + 0.4 * torch.rand(count, 2, generator=generator)) * image_size
    boxes = torch.cat([corner, (corner + side).clamp(max=image_size - 1)], dim=1)
    return torch.cat([(torch.arange(count) % images).float()[:, None], boxes], dim=1)


# ---- Faster R-CNN -----------------------------------------------------------------------------------------
class FasterRCNNExport(nn.Module):
    """One image ``(3, H, W)`` in [0, 1] -> ``boxes (N, 4)`` xyxy in its pixels, ``labels (N,)``, ``scores (N,)``.

    torchvision's ``GeneralizedRCNN`` on the task's own backbone, RPN and RoI heads (shared, not copied) with a
    ``GeneralizedRCNNTransform`` standing for the data pipeline: ``min_size = max_size = image_size`` scales
    the longest side to ``image_size`` (``min(S / min(h, w), S / max(h, w))``), as ``LongestMaxSize`` does; it
    normalises with the data's mean/std, pads to a multiple of 32, and maps the boxes back to the input image."""

    def __init__(self, task, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        d = task.detector
        transform = GeneralizedRCNNTransform(image_size, image_size, list(mean), list(std))
        self.model = GeneralizedRCNN(d.backbone, d.rpn, d.roi_heads, transform).eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.model([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"]


def faster_rcnn_spec(task, datamodule=None) -> ExportSpec:
    """The export spec of a Faster R-CNN task: one image of any size in, boxes, labels and scores out
    (torchvision's ONNX path, resize and NMS in the graph).

    Args:
        task: the ``FasterRCNNTask``.
        datamodule: the data, for the image size and normalisation (default: the task's saved settings).
    """
    size, mean, std, source = data_settings(task, datamodule)
    module = FasterRCNNExport(task, size, mean, std).eval()
    # a non-square example (the content of a padded batch image): the trace sees a real resize path
    image = example_image(size)[:, : size * 3 // 4]
    h = task.hparams
    preprocess = {
        **common_preprocess(task, size, mean, std),
        "input": "one image (3, H, W), any H and W (no batch dimension: torchvision's detection ONNX path takes one)",
        "resize": (f"inside the graph (torchvision GeneralizedRCNNTransform, min_size = max_size = {size}): the "
                   f"longest side to {size} px, bilinear; boxes come back in the input image's pixels"),
        "outputs": {"boxes": "(N, 4) xyxy, input-image pixels", "labels": "(N,) int64, 1..K",
                    "scores": "(N,) class probability, descending"},
        "postprocessing": (f"inside the graph: box decoding, clipping, score > {h.score_thresh}, per-class NMS at "
                           f"IoU {h.nms_thresh}, at most {h.detections_per_img} detections"),
    }
    return ExportSpec(exporter="legacy", 
        module=module, example_inputs=(image,), input_names=["image"], output_names=["boxes", "labels", "scores"],
        dynamic_batch=False, preprocess=preprocess, atol=1e-3, rtol=1e-3,
        dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"},
                      "scores": {0: "detections"}},
        min_opset=11,
        notes=(f"Faster R-CNN through torchvision's ONNX path: resize, normalisation, RPN, RoI heads, box decoding "
               f"and NMS in one graph, one image per call. image_size, mean and std from {source}. The in-graph "
               f"resize is torch's bilinear interpolation, the training pipeline's is OpenCV's (albumentations "
               f"LongestMaxSize): detections on resized photos can differ slightly from densecnn predict."))


# ---- OverFeat ---------------------------------------------------------------------------------------------
class OverFeatExport(nn.Module):
    """``(B, 3, S, S)`` in [0, 1] -> per pyramid scale ``probs (B, A, K + 1, rows, cols)`` (softmax over the
    K + 1 classes) and ``deltas (B, A, K, 4, rows, cols)`` (class-specific ``dx, dy, dw, dh``): the task's
    ``score_maps`` at every scale, reshaped by box ratio (``A``) and class."""

    def __init__(self, task, mean: Sequence[float], std: Sequence[float], scales: Sequence[float]):
        super().__init__()
        self.task = task
        self.normalise = Normalise(mean, std)
        self.scales = [float(s) for s in scales]
        self.ratios = len(task.ratios)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.normalise(images)
        outputs = []
        for scale in self.scales:  # as ``OverFeatTask.pyramid_windows`` scales the normalised batch
            scaled = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            logits, deltas = self.task.score_maps(scaled)
            b, _, rows, cols = logits.shape
            outputs.append(logits.reshape(b, self.ratios, -1, rows, cols).softmax(dim=2))
            outputs.append(deltas.reshape(b, self.ratios, -1, 4, rows, cols))
        return tuple(outputs)


def overfeat_spec(task, dynamic_batch: bool, datamodule=None) -> ExportSpec:
    """The export spec of an OverFeat task: its convolutional network per pyramid scale, class-probability and
    box-delta maps out, with the decoding rule in ``preprocess.json`` (Sermanet et al. Section 4).

    Args:
        task: the ``OverFeatTask``.
        dynamic_batch: a dynamic batch dimension.
        datamodule: the data (default: the task's saved settings).
    """
    size, mean, std, source = data_settings(task, datamodule)
    h = task.hparams
    scales = [float(s) for s in h.scales if size * float(s) >= task.window]  # the task skips the others too
    if not scales:
        raise ValueError(f"an image_size of {size} px is smaller than one {task.window} px window at every scale "
                         f"of model.init_args.scales={list(h.scales)}: nothing to export")
    module = OverFeatExport(task, mean, std, scales).eval()
    names = [f"{kind}_{i}" for i in range(len(scales)) for kind in ("probs", "deltas")]
    with torch.no_grad():
        maps = module(example_images(size))
    decoding = {
        "maps": {f"probs_{i}": f"scale {s}: (B, A, K + 1, {m.shape[-2]}, {m.shape[-1]}) class probabilities, "
                               f"column 0 background" for i, (s, m) in enumerate(zip(scales, maps[::2]))}
        | {f"deltas_{i}": f"scale {s}: (B, A, K, 4, rows, cols) box deltas (dx, dy, dw, dh) of classes 1..K"
           for i, s in enumerate(scales)},
        "scales": scales,
        "stride": int(task.stride),
        "window": int(task.window),
        "ratios": list(task.ratios),
        "window_box": ("cell (i, j) of scale f and ratio r (height / width) stands for the box of centre "
                       "cx = (j * stride + window / 2) / f, cy = (i * stride + window / 2) / f, width "
                       "window / sqrt(r) / f, height window * sqrt(r) / f, in network-input pixels"),
        "box_weights": list(BOX_WEIGHTS),
        "box_regression": ("for class k: cx' = cx + dx / 10 * w, cy' = cy + dy / 10 * h, "
                           f"w' = w * exp(min(dw / 5, {BOX_CLAMP:.4f})), h' = h * exp(min(dh / 5, {BOX_CLAMP:.4f})); "
                           "box (cx' - w'/2, cy' - h'/2, cx' + w'/2, cy' + h'/2) (torchvision BoxCoder, "
                           "weights 10, 10, 5, 5)"),
        "then": (f"clip boxes to the image content, keep class scores > {h.score_thresh}, drop boxes under 1 px, "
                 f"per-class NMS at IoU {h.nms_thresh} over all scales together, keep the top "
                 f"{h.detections_per_img}"),
    }
    preprocess = {**common_preprocess(task, size, mean, std),
                  "input": f"(B, 3, {size}, {size})", "resize": padded_resize_rule(size), "decoding": decoding}
    axes = {name: {0: "batch"} for name in ["images", *names]} if dynamic_batch else {}
    return ExportSpec(exporter="legacy", 
        module=module, example_inputs=(example_images(size),), input_names=["images"], output_names=names,
        dynamic_batch=dynamic_batch, preprocess=preprocess, dynamic_axes=axes, min_opset=11,
        notes=(f"OverFeat's convolutional network only: per pyramid scale {scales} the class-probability and box-"
               f"delta maps; the window decoding (map cell -> window, box regression, merging across scales with "
               f"per-class NMS) is left to the caller and written in preprocess.json's 'decoding'. image_size, "
               f"mean and std from {source}."))


# ---- Fast R-CNN and R-CNN ---------------------------------------------------------------------------------
class RegionExport(nn.Module):
    """``images (B, 3, S, S)`` in [0, 1] and ``rois (K, 5)`` ``[batch index, x1, y1, x2, y2]`` (network-input
    pixels) -> ``probs (K, K + 1)`` (column 0 background) and ``deltas (K, (K + 1) * 4)``: the task's
    ``roi_features`` then ``region_scores``, exactly what ``detect`` computes before its NMS."""

    def __init__(self, task, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.task = task
        self.normalise = Normalise(mean, std)

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.region_scores(self.task.roi_features(self.normalise(images), rois))


def region_spec(task, dynamic_batch: bool, what: str, datamodule=None) -> ExportSpec:
    """The export spec of R-CNN or Fast R-CNN: the per-RoI network with images and ``rois`` as inputs, class
    probabilities and class-specific box deltas out (NMS left to the caller).

    Args:
        task: the task.
        dynamic_batch: a dynamic batch dimension.
        what: the task's name for the model card.
        datamodule: the data (default: the task's saved settings).
    """
    size, mean, std, source = data_settings(task, datamodule)
    h = task.hparams
    module = RegionExport(task, mean, std).eval()
    preprocess = {
        **common_preprocess(task, size, mean, std),
        "input": f"images (B, 3, {size}, {size}) and rois (K, 5) float32 [batch index, x1, y1, x2, y2]",
        "resize": padded_resize_rule(size) + "; proposals are scaled by the same factor",
        "proposals": ("external: selective search (densecnn.data.detection.selective_search) or a proposals "
                      "file, in network-input pixels"),
        "outputs": {"probs": "(K, K + 1) class probabilities per RoI, column 0 background",
                    "deltas": "(K, (K + 1) * 4) class-specific box deltas (dx, dy, dw, dh) per RoI"},
        "box_weights": list(BOX_WEIGHTS),
        "box_regression": ("for class k, the RoI's centre/size moved by deltas[:, 4k:4k+4] as torchvision's "
                           "BoxCoder with weights (10, 10, 5, 5) decodes (see OverFeat's rule)"),
        "then": (f"clip to the image content, keep scores > {h.score_thresh}, drop boxes under 1 px, per-class NMS "
                 f"at IoU {h.nms_thresh}, keep the top {h.detections_per_img}"),
    }
    axes = ({"images": {0: "batch"}, "rois": {0: "rois"}, "probs": {0: "rois"}, "deltas": {0: "rois"}}
            if dynamic_batch else {"rois": {0: "rois"}, "probs": {0: "rois"}, "deltas": {0: "rois"}})
    return ExportSpec(exporter="legacy", 
        module=module, example_inputs=(example_images(size), example_rois(size)),
        input_names=["images", "rois"], output_names=["probs", "deltas"], dynamic_batch=dynamic_batch,
        preprocess=preprocess, dynamic_axes=axes, min_opset=16,
        notes=(f"{what} with the region proposals as an explicit input: the graph scores given RoIs; proposals, box "
               f"decoding and NMS stay with the caller (preprocess.json). image_size, mean and std from {source}."))


__all__ = ["FasterRCNNExport", "Normalise", "OverFeatExport", "RegionExport",
           "example_image", "example_images", "example_rois", "faster_rcnn_spec", "overfeat_spec",
           "region_spec"]
