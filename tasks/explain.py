"""``python -m densecnn explain``: what a trained checkpoint looks at, as pictures, for every task family.

    python -m densecnn explain <method> --config C.yaml --ckpt_path X [--num-images N] [--target T]
        [--layers L ...] [--window H W] [--stride H W] [--region TOP LEFT BOTTOM RIGHT] [--boxes detections|
        ground_truth] [--k K] [--channels C ...] [--compare OTHER_CKPT] [--epsilon E] [--steps S]
        [--output DIR] [--data.* / --model.* overrides]

The task is built from the config and the checkpoint as ``export`` builds it (``tasks.export.build_from_config``),
N test images are explained, and the pictures, a ``pictures.json`` of what each shows and a static ``index.html``
go to ``--output`` (default ``<run dir>/explain/<method>``: beside the run's ``checkpoints/`` folder).

What is explained, per task family (``explain_task`` in a notebook takes the same options):
  * classification: the class logit of the predicted class, or of ``target`` (a class name or index);
  * detection (Faster R-CNN, Fast R-CNN): each detected box (the ``max_boxes`` best above the task's
    ``display_thresh``, or the ground-truth boxes with ``boxes="ground_truth"``). The differentiable score is the
    RoI head's class logit for the box's label with the box itself, held fixed, as the region of interest: the
    image gradient flows through the backbone, RoI pooling and the box head, not through the proposal
    mechanism (Faster R-CNN's RPN and NMS are not differentiable in the box coordinates either);
  * dense prediction: a chosen output region: the mean predicted depth (metres) over a pixel window, or
    ``semantic:<class>``'s mean class score over it (``region``, default the centre of the image);
  * video: the class logit of a clip (the middle clip of an evaluation batch), attributed over space and time
    and drawn as a frame strip on one colour scale.

Attribution methods (``densecnn.explain.attribution``, captum): saliency, guided_backprop, deconvnet, gradcam,
occlusion, integrated_gradients. Methods of the network or of the whole test split (``dataset_methods``):
  * ``filters``: ``densecnn.explain.filter_picture`` of the first convolution or of each ``--layers``;
  * ``topk``: Zeiler & Fergus's grid per layer: the ``--k`` strongest activations of each of ``--channels`` over
    the test split with their deconvnet projections and image patches (any image task's backbone; not video);
  * ``layer_stats``: ResNet Fig. 7, each layer's response std over a test batch, with ``--compare OTHER_CKPT``
    on the same plot;
  * ``maximise``: activation maximisation of classes (``--target``, classifiers) or of ``--channels`` of
    ``--layers`` (any image task's backbone);
  * ``fool``: targeted adversarial examples of correctly classified test images within ``--epsilon`` and
    images grown from noise (classifiers only).
Their numbers (top activations, stds, probabilities, budgets) go into ``pictures.json`` beside the titles, and
raw maximised / adversarial pixels into PNG files beside each picture.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from densecnn.errors import ConfigError, UserError
from densecnn.explain.attribution import (
    HEAT_LABELS,
    METHODS,
    attribute,
    attribution_figure,
    frame_strip_figure,
    heat_map,
)
from densecnn.explain.pictures import figure_to_array
from densecnn.viz import save_png, to_uint8_images

#: most frames a video strip shows (picked evenly over the clip)
STRIP_FRAMES = 8


@dataclass
class Target:
    """One thing to explain: ``score(x) -> (N,)`` of inputs shaped like ``inputs`` (1, C, [T,] H, W)."""
    inputs: torch.Tensor
    score: Callable[[torch.Tensor], torch.Tensor]
    name: str  # file stem, e.g. "image003_box1"
    what: str  # caption, e.g. "circle (box 1, score 0.93)"
    value: float
    box: tuple[float, float, float, float] | None = None  # xyxy, input pixels: a detection or a dense window


@dataclass
class Picture:
    """A rendered explanation: ``image`` (HxWx3 uint8) and what it shows (``heats``: one map per panel)."""
    name: str
    title: str
    image: np.ndarray
    method: str
    value: float | None
    heats: list[torch.Tensor] = field(default_factory=list)
    #: the numbers the picture shows, written to ``pictures.json`` (JSON values: per-channel top activations,
    #: per-layer response stds, an adversarial example's budget and confidences)
    details: dict[str, Any] = field(default_factory=dict)
    #: further images (HxWx3 uint8) written as ``<name>_<key>.png`` beside the picture: the raw maximised or
    #: adversarial pixels, which the picture shows scaled into a grid
    files: dict[str, np.ndarray] = field(default_factory=dict)


# ---- finding modules -------------------------------------------------------------------------------------------
def _feature_modules(backbone: nn.Module) -> list[str]:
    info = getattr(backbone, "feature_info", None) or []
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else [vars(i) if not isinstance(i, dict) else i
                                                                 for i in info]
    return [d["module"] for d in dicts if d.get("module")]


def find_layer(task: nn.Module, name: str) -> nn.Module:
    """A module by dotted name, relative to the task (``backbone.layer3``) or to its backbone (``layer3``)."""
    for root in (task, getattr(task, "backbone", None)):
        if root is None:
            continue
        try:
            return root.get_submodule(name)
        except AttributeError:
            continue
    names = ", ".join(_feature_modules(task.backbone)) or "see print(task)"
    raise ConfigError(f"--layers {name!r}: no such module in {type(task).__name__} (the backbone's feature maps: "
                      f"{names}; any dotted module name works)")


def _deepest_spatial(backbone: nn.Module, names: Sequence[str], run: Callable[[], Any]) -> nn.Module:
    """The deepest of ``names`` whose output still has more than one position (Grad-CAM on a 1x1 map is flat)."""
    modules = [backbone.get_submodule(n) for n in names]
    shapes: dict[int, tuple[int, ...]] = {}
    def record(k: int):
        def hook(module, args, output) -> None:  # returns None: the output is left as it is
            shapes.setdefault(k, tuple(output.shape[2:]))
        return hook

    handles = [m.register_forward_hook(record(k)) for k, m in enumerate(modules)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    for k in reversed(range(len(modules))):
        if k in shapes and int(np.prod(shapes[k])) > 1:
            return modules[k]
    raise ConfigError(f"no feature map of {type(backbone).__name__} has more than one position for Grad-CAM; "
                      f"choose one with --layers")


def default_layer(task, inputs: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """Grad-CAM's layer when none is given: the deepest backbone feature map the score is computed from."""
    names = _feature_modules(task.backbone)
    detector = getattr(task, "detector", None)
    if detector is not None:  # Faster R-CNN: the deepest map its RPN and RoI pooling read
        return task.backbone.get_submodule(names[detector.backbone.indices[-1]])
    if "feature_index" in task.hparams and getattr(task, "needs_proposals", False):  # Fast R-CNN's pooled map
        return task.backbone.get_submodule(names[task.hparams.feature_index])
    if not names:
        raise ConfigError(f"{task.hparams.backbone} declares no feature maps; choose Grad-CAM's layer with --layers")
    return _deepest_spatial(task.backbone, names, lambda: score(inputs))


# ---- what to explain, per task family --------------------------------------------------------------------------
def _class_index(target: str | int | None, names: Sequence[str], what: str) -> int | None:
    if target is None:
        return None
    if isinstance(target, int) or str(target).isdigit():
        index = int(target)
    elif str(target) in names:
        index = list(names).index(str(target))
    else:
        raise ConfigError(f"--target {target!r}: not a {what} of this model ({', '.join(names[:20])}) nor an index")
    if not 0 <= index < len(names):
        raise ConfigError(f"--target {target}: the model has {len(names)} {what}es (0-{len(names) - 1})")
    return index


def classification_targets(task, images: torch.Tensor, target=None, first: int = 0) -> list[Target]:
    """What to explain for classification: each image's predicted class logit, or ``target``'s.

    Args:
        task: the classification task.
        images: the normalised batch.
        target: a class name or index (default: the predicted class).
        first: the index of the first image, for titles.
    """
    index = _class_index(target, task.class_names, "class")
    with torch.no_grad():
        probs = task(images).float().softmax(dim=1)
    out = []
    for i in range(len(images)):
        c = int(probs[i].argmax()) if index is None else index
        kind = "predicted" if index is None else "chosen"
        out.append(Target(images[i:i + 1], lambda x, c=c: task(x)[:, c], f"image{first + i:03d}",
                          f"{kind} class {task.class_names[c]} (p={float(probs[i, c]):.2f})", float(probs[i, c])))
    return out


def _video_logits(task, clips: torch.Tensor) -> torch.Tensor:
    """Clip logits with gradients (the feature protocol's descriptors are computed without them for training)."""
    if not task.hparams.feature_protocol:
        return task.clip_logits(clips)
    backbone = task.backbone
    features = backbone.embed(clips, task.hparams.feature_layer) if hasattr(backbone, "embed") else backbone(clips)
    return task.probe(F.normalize(features, dim=1))


def video_targets(task, videos: torch.Tensor, target=None, first: int = 0) -> list[Target]:
    """What to explain for video: the class logit of each video's middle clip (predicted, or ``target``'s).

    Args:
        task: the video task.
        videos: the clips (N, C, T, H, W) or views (N, K, C, T, H, W).
        target: a class name or index (default: the predicted class).
        first: the index of the first video, for titles.
    """
    clips = videos[:, videos.shape[1] // 2] if videos.dim() == 6 else videos  # the middle clip of K views
    index = _class_index(target, task.class_names, "class")
    with torch.no_grad():
        probs = _video_logits(task, clips).float().softmax(dim=1)
    out = []
    for i in range(len(clips)):
        c = int(probs[i].argmax()) if index is None else index
        kind = "predicted" if index is None else "chosen"
        out.append(Target(clips[i:i + 1], lambda x, c=c: _video_logits(task, x)[:, c], f"video{first + i:03d}",
                          f"{kind} class {task.class_names[c]} (p={float(probs[i, c]):.2f})", float(probs[i, c])))
    return out


def _dense_region(region: Sequence[int] | None, size: Sequence[int]) -> tuple[int, int, int, int]:
    height, width = (int(s) for s in size)
    if region is None:  # the centre of the image, half its height and width
        return height // 4, width // 4, height - height // 4, width - width // 4
    top, left, bottom, right = (int(v) for v in region)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ConfigError(f"--region {top} {left} {bottom} {right} (top left bottom right, pixels): must lie in the "
                          f"{height} x {width} input and not be empty")
    return top, left, bottom, right


def dense_targets(task, images: torch.Tensor, target=None, region=None, maps=None, first: int = 0) -> list[Target]:
    """The mean depth (metres) or a class's mean score over ``region`` of the output."""
    output, _, label = (str(target) if target is not None else task.targets[0]).partition(":")
    if output not in ("depth", "semantic") or output not in task.targets:
        raise ConfigError(f"--target {target!r}: explain a dense model's 'depth' or 'semantic:<class>' output; this "
                          f"model predicts {', '.join(task.targets)}")
    top, left, bottom, right = _dense_region(region, images.shape[-2:])
    names = task.class_names if output == "semantic" else []

    def window(x: torch.Tensor, i: int) -> dict[str, torch.Tensor]:
        sample_maps = None if maps is None else {k: v[i:i + 1].expand(len(x), *v.shape[1:]) for k, v in maps.items()}
        return task(x, sample_maps)[output]

    with torch.no_grad():
        predicted = task(images, maps)[output]
    out = []
    for i in range(len(images)):
        box = (float(left), float(top), float(right - 1), float(bottom - 1))
        if output == "depth":
            value = float(predicted[i, top:bottom, left:right].mean())
            score = (lambda x, i=i: window(x, i)[:, top:bottom, left:right].mean(dim=(1, 2)))
            what = f"mean depth {value:.2f} m in rows {top}-{bottom - 1}, columns {left}-{right - 1}"
        else:
            c = _class_index(label or None, names, "class")
            if c is None:  # the class most pixels of the window are given
                c = int(predicted[i, :, top:bottom, left:right].argmax(dim=0).flatten().mode().values)
            value = float(predicted[i, c, top:bottom, left:right].mean())
            score = (lambda x, i=i, c=c: window(x, i)[:, c, top:bottom, left:right].mean(dim=(1, 2)))
            what = f"mean {names[c]} score {value:.2f} in rows {top}-{bottom - 1}, columns {left}-{right - 1}"
        out.append(Target(images[i:i + 1], score, f"image{first + i:03d}", what, value, box))
    return out


def _box_logit(task, image_size: tuple[int, int], box: torch.Tensor, label: int
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The RoI head's logit of ``label`` for ``box`` (fixed) as a function of the image (module docstring)."""
    detector = getattr(task, "detector", None)

    def score(x: torch.Tensor) -> torch.Tensor:
        rois = [box[None].to(x)] * len(x)
        if detector is not None:  # Faster R-CNN: backbone (+FPN), MultiScaleRoIAlign, box head, predictor
            features = OrderedDict((k, f.float()) for k, f in detector.backbone(x).items())
            heads = detector.roi_heads
            pooled = heads.box_roi_pool(features, rois, [image_size] * len(x))
            logits = heads.box_predictor(heads.box_head(pooled))[0]
        else:  # a proposal-based detector: its own region features and sibling outputs
            logits = task.predict_regions(task.region_features(x, rois))[0]
        return logits[:, label]
    return score


def detection_targets(task, batch: dict, target=None, boxes: str = "detections", max_boxes: int = 3,
                      first: int = 0) -> list[Target]:
    """What to explain for detection: each detected (or ground-truth) box's class logit from the RoI head with
    the box held fixed as the region of interest (Faster R-CNN and Fast R-CNN).

    Args:
        task: the detection task.
        batch: the batch (images, targets, image sizes).
        target: a class to restrict to.
        boxes: ``detections`` or ``ground_truth``.
        max_boxes: boxes per image.
        first: the index of the first image, for titles.

    Raises:
        UserError: a detector without a differentiable RoI head (R-CNN, OverFeat).
    """
    from .detection.faster_rcnn import FasterRCNNTask
    from .detection.proposal_based import ProposalDetectionTask
    from .detection.rcnn import RCNNTask

    if not isinstance(task, (FasterRCNNTask, ProposalDetectionTask)) or isinstance(task, RCNNTask):
        raise UserError(f"explain supports Faster R-CNN and Fast R-CNN among the detectors, not "
                        f"{type(task).__name__} (its regions are warped crops or sliding windows, not RoIs of one "
                        f"feature map)")
    if boxes not in ("detections", "ground_truth"):
        raise ConfigError(f"--boxes {boxes!r}: expected detections or ground_truth")
    images = batch["image"]
    label_filter = _class_index(target, task.class_names, "class")
    sizes = task.image_sizes(batch)
    if boxes == "detections":
        with torch.no_grad():
            found = task.detect(images, batch)
        chosen = [{k: d[k][d["scores"] >= task.hparams.display_thresh] for k in ("boxes", "labels", "scores")}
                  for d in found]
    else:
        chosen = [{"boxes": t["boxes"].float(), "labels": t["labels"].long(),
                   "scores": torch.full((len(t["labels"]),), float("nan"))} for t in batch["target"]]
    out = []
    for i, d in enumerate(chosen):
        keep = torch.ones(len(d["labels"]), dtype=torch.bool) if label_filter is None else \
            d["labels"].cpu() == label_filter + 1  # labels 1..K, 0 background
        order = torch.nonzero(keep).flatten()[:max_boxes]
        if len(order) == 0:
            print(f"explain: image {first + i}: no {boxes.replace('_', '-')} box"
                  f"{'' if label_filter is None else ' of ' + task.class_names[label_filter]} to explain "
                  f"(display_thresh {task.hparams.display_thresh})", file=sys.stderr)
        for rank, j in enumerate(order.tolist()):
            box, label, det_score = d["boxes"][j].float(), int(d["labels"][j]), float(d["scores"][j])
            score = _box_logit(task, sizes[i], box.detach(), label)
            with torch.no_grad():
                logit = float(score(images[i:i + 1]))
            source = "detection" if boxes == "detections" else "ground truth"
            shown = f"score {det_score:.2f}, " if boxes == "detections" else ""
            out.append(Target(images[i:i + 1], score, f"image{first + i:03d}_box{rank}",
                              f"{task.class_names[label - 1]} ({source} {rank}, {shown}RoI logit {logit:.2f})",
                              logit, tuple(float(v) for v in box)))
    return out


def task_targets(task, batch: dict | torch.Tensor, target=None, *, region=None, boxes: str = "detections",
                 max_boxes: int = 3, first: int = 0) -> list[Target]:
    """The targets of a batch (a DataModule batch dict, or a tensor of normalised images / clips) for any task."""
    from .classification import ClassificationTask
    from .dense import DensePredictionTask
    from .detection.base import DetectionTask
    from .video import VideoClassificationTask

    batch = batch if isinstance(batch, dict) else {"video" if isinstance(task, VideoClassificationTask)
                                                   else "image": batch}
    if isinstance(task, VideoClassificationTask):
        return video_targets(task, batch["video"], target, first)
    if isinstance(task, DetectionTask):
        return detection_targets(task, batch, target, boxes, max_boxes, first)
    if isinstance(task, DensePredictionTask):
        return dense_targets(task, batch["image"], target, region, task.input_maps_from(batch), first)
    if isinstance(task, ClassificationTask):
        return classification_targets(task, batch["image"], target, first)
    raise UserError(f"explain does not know the task {type(task).__name__}")


# ---- the pictures ----------------------------------------------------------------------------------------------
def _render(task, t: Target, method: str, heats: list[torch.Tensor], panel_titles: list[str]) -> np.ndarray:
    mean, std = task.normalisation()
    title = f"{method}: {t.what}"
    label = HEAT_LABELS[method]
    if t.inputs.dim() == 5:  # a clip: frames in a row, one colour scale
        clip = t.inputs[0]
        picks = torch.linspace(0, clip.shape[1] - 1, min(STRIP_FRAMES, clip.shape[1])).round().long()
        frames = to_uint8_images(clip[:, picks].transpose(0, 1), mean, std)
        return figure_to_array(frame_strip_figure(frames, heats[0][picks], title=title, label=label,
                                                  frame_numbers=picks.tolist()))
    image = to_uint8_images(t.inputs, mean, std)[0]
    return figure_to_array(attribution_figure(image, heats, panel_titles, title=title, label=label, box=t.box))


def explain_task(task, images: dict | torch.Tensor, method: str = "saliency", target=None, *,
                 layers: Sequence[str] | None = None, window: Sequence[int] | None = None,
                 stride: Sequence[int] | int | None = None, baseline: float = 0.0, steps: int = 32,
                 region: Sequence[int] | None = None, boxes: str = "detections", max_boxes: int = 3,
                 progress: bool = True, first: int = 0) -> list[Picture]:
    """Attribution pictures of a loaded task on a batch (a DataModule batch dict, or normalised images / clips),
    one per image (per detected box for detectors). ``method``: one of ``METHODS``; ``target``: the class (name
    or index; dense: ``depth`` or ``semantic:<class>``); ``layers``: Grad-CAM's layers, one panel each (default
    the deepest feature map); ``window``/``stride``: occlusion's, per spatial dimension (video: T, H, W);
    ``region``: the dense output window (top, left, bottom, right); ``boxes``: detections or ground_truth.
    The task is put in eval mode for the pass and each module's mode restored after it."""
    if method not in METHODS:
        raise ConfigError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")
    device = next(task.parameters()).device
    modes = {m: m.training for m in task.modules()}
    task.eval()
    try:
        batch = _to_device(images, device)
        targets = task_targets(task, batch, target, region=region, boxes=boxes, max_boxes=max_boxes, first=first)
        chosen_layers = [(name, find_layer(task, name)) for name in layers] if layers else None
        pictures = []
        from tqdm.auto import tqdm

        for t in tqdm(targets, desc=f"explain {method}", disable=not progress):
            if method == "gradcam":
                pairs = chosen_layers or [("deepest feature map", default_layer(task, t.inputs, t.score))]
            else:
                pairs = [(method, None)]
            heats = []
            for _, layer in pairs:
                attributions = attribute(t.score, t.inputs, method, network=task, layer=layer, window=window,
                                         stride=stride, baseline=baseline, steps=steps)
                heats.append(heat_map(attributions, method)[0].cpu())
            titles = [name for name, _ in pairs] if method == "gradcam" else [method]
            pictures.append(Picture(t.name, f"{method}: {t.what}", _render(task, t, method, heats, titles), method,
                                    t.value, heats))
        return pictures
    finally:
        for module, mode in modes.items():
            module.training = mode


def _to_device(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``, every tensor a normal (not inference-mode) copy that autograd can use."""
    if isinstance(batch, torch.Tensor):
        with torch.inference_mode(False):
            return batch.detach().clone().to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def write_pictures(pictures: Sequence[Picture], folder: Path, title: str) -> Path:
    """Each picture as ``<name>.png``, ``pictures.json`` (name, file, title, value) and an ``index.html`` showing
    them in order. Returns the index's path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for p in pictures:
        save_png(p.image, folder / f"{p.name}.png")
        entry = {"name": p.name, "file": f"{p.name}.png", "title": p.title, "method": p.method, "value": p.value}
        if p.files:
            entry["files"] = {}
            for key, image in p.files.items():
                save_png(image, folder / f"{p.name}_{key}.png")
                entry["files"][key] = f"{p.name}_{key}.png"
        if p.details:
            entry["details"] = p.details
        entries.append(entry)
    (folder / "pictures.json").write_text(json.dumps(entries, indent=2) + "\n")
    figures = "\n".join(f'<figure><img src="{html.escape(e["file"])}" alt="{html.escape(e["title"])}">'
                        f'<figcaption>{html.escape(e["title"])}</figcaption></figure>' for e in entries)
    index = folder / "index.html"
    index.write_text(f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
                     "<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.5em;"
                     "vertical-align:top}img{max-width:100%}figcaption{font-size:.85em}</style></head>\n"
                     f"<body><h1>{html.escape(title)}</h1>\n{figures}\n</body></html>\n")
    return index


# ---- the command ---------------------------------------------------------------------------------------------
def default_output(checkpoint_path: Path, task_name: str, method: str) -> Path:
    """``<run dir>/explain/<method>`` where the checkpoint lies in a run's ``checkpoints/`` folder, else
    ``explain/<task>/<method>`` under the current directory."""
    from .export import output_beside_run

    return output_beside_run(checkpoint_path, "explain", "explain", task_name, method)


def parse_explain_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``densecnn explain`` arguments; the ``--model.*``/``--data.*`` overrides come back unparsed.

    Args:
        argv: the arguments after ``explain``.
    """
    parser = argparse.ArgumentParser(
        prog="densecnn explain", description="Pictures of what a checkpoint looks at on test images. Other "
        "--key value arguments (--model.init_args.x, --data.init_args.y) override the config.")
    parser.add_argument("method", help=f"one of {', '.join(METHODS)}, or a densecnn.explain method "
                                       f"({', '.join(dataset_methods()) or 'none installed'})")
    parser.add_argument("--config", "-c", action="append", required=True, help="the run's YAML config")
    parser.add_argument("--ckpt_path", "--ckpt-path", required=True, help="the checkpoint to explain")
    parser.add_argument("--num-images", "--num_images", type=int, default=None, help="test images to explain "
                        "(default 4); topk: images searched (default the whole split); layer_stats: the batch "
                        "(default 16); maximise: the first N classes (default 8)")
    parser.add_argument("--target", default=None, help="class name or index (default: the predicted class); "
                        "dense: depth or semantic:<class>; detection: explain only boxes of this class")
    parser.add_argument("--layers", nargs="+", default=None, help="module names (backbone.layer3 or layer3): "
                        "Grad-CAM's layers, or the layers of a dataset-level method")
    parser.add_argument("--window", type=int, nargs="+", default=None, help="occlusion window (H W; video T H W)")
    parser.add_argument("--stride", type=int, nargs="+", default=None, help="occlusion stride (default half the "
                        "window)")
    parser.add_argument("--baseline", type=float, default=0.0, help="occlusion / integrated gradients baseline "
                        "(in normalised input units: 0 is the data's mean colour)")
    parser.add_argument("--steps", type=int, default=None, help="integrated gradients' steps (default 32); "
                        "maximise: gradient steps (default 200); fool: PGD steps (default 40) and the fooling "
                        "images' most steps (default 500)")
    parser.add_argument("--k", type=int, default=9, help="topk: activations kept per channel")
    parser.add_argument("--channels", nargs="+", default=None, metavar="C", help="topk and maximise: channel "
                        "indices or ranges (0-7); default the first 8 (topk) or 4 (maximise)")
    parser.add_argument("--compare", type=Path, default=None, metavar="OTHER_CKPT", help="layer_stats: a second "
                        "checkpoint of the same task drawn on the same plot (e.g. plain against residual)")
    parser.add_argument("--epsilon", type=float, default=None, help="fool: the L-inf budget in [0, 1] pixel units "
                        "(default 8/255)")
    parser.add_argument("--region", type=int, nargs=4, default=None, metavar=("TOP", "LEFT", "BOTTOM", "RIGHT"),
                        help="dense: the output window whose mean is explained (default the image's centre)")
    parser.add_argument("--boxes", choices=("detections", "ground_truth"), default="detections",
                        help="detection: explain the detected boxes or the ground-truth ones")
    parser.add_argument("--max-boxes", "--max_boxes", type=int, default=3, help="detection: boxes per image")
    parser.add_argument("--output", type=Path, default=None, help="default: <run dir>/explain/<method>")
    return parser.parse_known_args(list(argv))


def explain_filters(task, datamodule, *, layers: Sequence[str] | None = None, **_: Any) -> list[Picture]:
    """The kernels of each of ``layers`` (default the first convolution) as a picture
    (``densecnn.explain.filter_picture``: AlexNet's two towers side by side)."""
    from densecnn.explain import filter_picture

    pictures = []
    for layer in layers or [None]:
        name = layer or "first convolution"
        try:
            figure = filter_picture(task.backbone, layer)
        except AttributeError as err:
            raise ConfigError(f"--layers {layer!r}: no such module in the backbone ({err})") from err
        pictures.append(Picture(f"filters_{(layer or 'first_conv').replace('.', '_')}", f"filters: {name}",
                                figure_to_array(figure), "filters", None))
    return pictures


# ---- dataset-level methods: the Zeiler-Fergus grid, layer responses, activation maximisation, fooling -----------
def task_family(task) -> str:
    """``classification``, ``detection``, ``dense`` or ``video``: what the dataset-level methods can do with it."""
    from .classification import ClassificationTask
    from .dense import DensePredictionTask
    from .detection.base import DetectionTask
    from .video import VideoClassificationTask

    for cls, family in ((VideoClassificationTask, "video"), (DetectionTask, "detection"),
                        (DensePredictionTask, "dense"), (ClassificationTask, "classification")):
        if isinstance(task, cls):
            return family
    raise UserError(f"explain does not know the task {type(task).__name__}")


def backbone_layer(task, name: str) -> str:
    """``--layers`` entry -> a module path in ``task.backbone`` (``backbone.layer3``, ``layer3``, or a
    ``feature_info`` index)."""
    from densecnn.explain.receptive_field import layer_name

    name = str(name)
    relative = name.removeprefix("backbone.")
    try:
        return layer_name(task.backbone, relative)
    except UserError:
        names = ", ".join(_feature_modules(task.backbone)) or "see print(task.backbone)"
        raise ConfigError(f"--layers {name!r}: no such module in the backbone {task.hparams.backbone} (its feature "
                          f"maps: {names}; any dotted module name of the backbone works)") from None


def parse_channels(specs: Sequence[str] | None, default: int) -> list[int]:
    """``--channels``: indices and inclusive ranges (``0 3 8-11``); the first ``default`` when none given."""
    if not specs:
        return list(range(default))
    chosen: list[int] = []
    for spec in specs:
        low, dash, high = str(spec).partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ConfigError(f"--channels {spec!r}: expected a channel index (5) or an inclusive range (0-7)")
        chosen += list(range(int(low), int(high if dash else low) + 1))
    return chosen


def input_batch(task, datamodule, n: int) -> torch.Tensor:
    """The first ``n`` test inputs as one tensor, as the backbone takes them (video: the middle clip of each
    video's evaluation clips)."""
    from densecnn.explain.topk import batch_images

    parts = []
    for batch, _ in explain_batches(datamodule, n):
        inputs = batch_images(batch)
        parts.append(inputs[:, inputs.shape[1] // 2] if inputs.dim() == 6 else inputs)
    if not parts:
        raise UserError(f"{type(datamodule).__name__}'s test split has no images")
    return torch.cat(parts)


def checkpoint_label(path: Path) -> str:
    """A checkpoint's name on a plot: its run folder and file (``plain/last.ckpt``)."""
    path = Path(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{run.name}/{path.name}"


def load_like(task, path: Path):
    """The task of checkpoint ``path``, which must be of ``task``'s class (its own backbone and hyper-parameters,
    read from the checkpoint), in eval mode on ``task``'s device."""
    from .checkpoints import CheckpointError, read_checkpoint

    saved = (read_checkpoint(str(path)).get("densecnn") or {}).get("task")
    if saved is not None and saved != type(task).__name__:
        raise CheckpointError(f"--compare {path}: a {saved} checkpoint, but the explained one is a "
                              f"{type(task).__name__}; compare two checkpoints of the same task")
    device = next(task.parameters()).device
    try:  # the weights are the checkpoint's: no pretrained file is read
        return type(task).load_from_checkpoint(str(path), map_location=device, weights=None).eval()
    except (RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"--compare {path}: cannot be loaded as a {type(task).__name__} ({err})") from err


def _pixels(image: torch.Tensor) -> np.ndarray:
    """C x H x W pixels in [0, 1] -> H x W x 3 uint8, for the raw-image files beside a picture."""
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _stem(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_") or "x"


def explain_topk(task, datamodule, *, layers: Sequence[str] | None = None, num_images: int | None = None,
                 k: int = 9, channels: Sequence[str] | None = None, progress: bool = True, **_: Any
                 ) -> list[Picture]:
    """Zeiler & Fergus's grid per layer (``densecnn.explain.zeiler_fergus_grid``): the top ``k`` activations of
    each chosen channel over the test split (its first ``num_images`` images; one streamed pass with a progress
    bar), their deconvnet projections and image patches. ``layers`` default to the backbone's first four
    feature maps; ``channels`` to the first 8. Detection and dense tasks: their backbone on their test images."""
    from densecnn.explain import gather_images, top_activations, zeiler_fergus_grid

    if task_family(task) == "video":
        raise UserError("topk: the Zeiler-Fergus grid shows 2-D image patches, but a video backbone's units span "
                        "frames as well; explain video tasks with saliency, occlusion or another attribution "
                        "method, which draw a clip as a frame strip")
    backbone = task.backbone
    names = [backbone_layer(task, layer) for layer in layers] if layers else _feature_modules(backbone)[:4]
    if not names:
        raise ConfigError(f"{task.hparams.backbone} declares no feature maps; choose the layers with --layers")
    loader = test_loader(datamodule)
    top = top_activations(backbone, loader, names, k, max_images=num_images, progress=progress)
    wanted = {int(i) for t in top.values() for i in t.image_ids.flatten()}
    images = gather_images(loader, wanted, progress=progress)
    mean, std = task.normalisation()
    pictures = []
    for name, t in top.items():
        chosen = parse_channels(channels, min(8, t.channels))
        figure = zeiler_fergus_grid(backbone, t, images, channels=chosen, k=k, mean=mean, std=std)
        details = {"layer": name, "k": k,
                   "channels": {str(c): [{"value": v, "image": i, "position": list(p)} for v, i, p in t.entries(c)]
                                for c in chosen}}
        pictures.append(Picture(f"topk_{_stem(name)}", f"topk: {name}, top-{k} activations of channels "
                                f"{chosen[0]}-{chosen[-1]} with deconvnet projections", figure_to_array(figure),
                                "topk", None, details=details))
    return pictures


def explain_layer_stats(task, datamodule, *, layers: Sequence[str] | None = None, num_images: int | None = None,
                        compare: tuple[str, Any] | None = None, label: str = "this checkpoint", **_: Any
                        ) -> list[Picture]:
    """ResNet Fig. 7 (``densecnn.explain.layer_response_std``): the std of each layer's responses over the first
    ``num_images`` (default 16) test inputs, for this checkpoint and ``compare`` (a ``(label, task)``: another
    checkpoint of the same task, on the same inputs) on one plot. ``layers`` default to the BN after every 3x3
    convolution (the paper's choice), else every convolution."""
    from densecnn.explain import layer_response_std, response_std_picture

    images = input_batch(task, datamodule, num_images or 16)
    names = [backbone_layer(task, layer) for layer in layers] if layers else None
    results = {label: layer_response_std(task.backbone, images, names)}
    if compare is not None:
        other_label, other = compare
        if task_family(other) != task_family(task):
            raise ConfigError(f"--compare: a {task_family(other)} checkpoint cannot be compared with a "
                              f"{task_family(task)} one")
        other_names = [backbone_layer(other, layer) for layer in layers] if layers else None
        results[other_label if other_label != label else f"{other_label} (compare)"] = layer_response_std(
            other.backbone, images, other_names)
    shown = " vs ".join(f"{k} ({len(v)} layers)" for k, v in results.items())
    figure = response_std_picture(results, title=f"layer responses over {len(images)} test inputs")
    return [Picture("layer_stats", f"layer_stats: response std per layer, {shown}", figure_to_array(figure),
                    "layer_stats", None, details={"images": len(images), "models": results})]


def explain_maximise(task, datamodule, *, layers: Sequence[str] | None = None, num_images: int | None = None,
                     target: str | None = None, channels: Sequence[str] | None = None, steps: int | None = None,
                     progress: bool = True, **_: Any) -> list[Picture]:
    """Activation maximisation (``densecnn.explain.maximise_class`` / ``maximise_channel``), at the size of the
    test images and with the data's normalisation (``task.normalisation()``): each class of ``target`` (names or
    indices, comma-separated; default the first ``num_images`` classes, at most 8) of a classifier, or with
    ``layers`` the ``channels`` of those backbone layers (any image task's backbone)."""
    from tqdm.auto import tqdm

    from densecnn.explain import maximisation_picture, maximise_channel, maximise_class

    family = task_family(task)
    if family == "video":
        raise UserError("maximise: activation maximisation optimises one image; a video model takes clips "
                        "(frames x height x width), which this does not optimise. Explain video tasks with an "
                        "attribution method (saliency, occlusion)")
    if layers and target is not None:
        raise ConfigError("maximise: give --target (classes) or --layers with --channels (channels), not both")
    if not layers and family != "classification":
        raise UserError(f"maximise: class targets need one class score per image, which a {family} model does not "
                        f"give (its scores belong to boxes or pixels); maximise channels of its backbone instead: "
                        f"--layers L --channels C ...")
    mean, std = task.normalisation()
    size = tuple(input_batch(task, datamodule, 1).shape[-2:])
    options = {"image_size": size, "steps": steps or 200, "mean": mean, "std": std}
    if layers:
        pairs = [(backbone_layer(task, layer), c) for layer in layers for c in parse_channels(channels, 4)]
        jobs = [(lambda name=name, c=c: maximise_channel(task.backbone, name, c, label=f"{name} ch{c}", **options))
                for name, c in pairs]
        name = f"maximise_{'_'.join(_stem(layer) for layer in layers)}"
    else:
        names = task.class_names
        classes = ([_class_index(t.strip(), names, "class") for t in str(target).split(",")] if target is not None
                   else list(range(min(num_images or 8, len(names)))))
        jobs = [(lambda c=c: maximise_class(task, c, label=names[c], **options)) for c in classes]
        name = "maximise_classes"
    results = [job() for job in tqdm(jobs, desc="maximise", disable=not progress)]
    class_names = getattr(task, "class_names", None)
    figure = maximisation_picture(results, class_names, title=f"Activation maximisation ({options['steps']} steps)")
    files = {f"{i:02d}_{_stem(r.target)}": _pixels(r.image) for i, r in enumerate(results)}
    details = {"targets": [{"target": r.target, "class_index": r.class_index, "probability": r.probability,
                            "objective": r.objective, "steps": r.steps, "file": f"{name}_{key}.png"}
                           for r, key in zip(results, files)]}
    return [Picture(name, f"maximise: {', '.join(r.target for r in results)}", figure_to_array(figure), "maximise",
                    None, details=details, files=files)]


def explain_fool(task, datamodule, *, num_images: int | None = None, target: str | None = None,
                 epsilon: float | None = None, steps: int | None = None, progress: bool = True, **_: Any
                 ) -> list[Picture]:
    """Fooling a classifier (``densecnn.explain.targeted_adversarial`` and ``fooling_images``): the first
    ``num_images`` (default 4) correctly classified test images pushed to ``target`` (default each image's next
    class) within an L-inf budget of ``epsilon`` pixel units (default 8/255), and an image grown from noise for
    each target class. Prints the budget used and the confidences per image."""
    from densecnn.explain import (
        adversarial_picture,
        fooling_images,
        fooling_picture,
        targeted_adversarial,
    )
    from densecnn.explain.maximise import evaluating

    family = task_family(task)
    if family != "classification":
        raise UserError(f"fool: adversarial and fooling images flip a classifier's one label per image; a {family} "
                        f"model gives none (its scores belong to boxes, pixels or clips)")
    n = num_images or 4
    eps = 8 / 255 if epsilon is None else epsilon
    names = task.class_names
    chosen_target = _class_index(target, names, "class")
    mean, std = task.normalisation()
    device = next(task.parameters()).device
    mean_t, std_t = (torch.tensor(list(v), device=device).view(1, -1, 1, 1) for v in (mean, std))
    pixels, labels, ids, seen = [], [], [], 0
    with evaluating(task):
        for batch in test_loader(datamodule):  # the first n test images the model gets right
            images, truth = batch["image"].to(device), torch.as_tensor(batch["label"]).to(device)
            with torch.no_grad():
                right = (task(images).argmax(dim=1) == truth).nonzero().flatten().tolist()
            for i in right[:n - len(ids)]:  # back to pixels: the budget is in pixel units
                pixels.append((images[i:i + 1] * std_t + mean_t).clamp(0, 1))
                labels.append(int(truth[i]))
                ids.append(seen + i)
            seen += len(images)
            if len(ids) == n:
                break
    if not ids:
        raise UserError(f"fool: the model classifies none of the {seen} test images correctly; there is nothing to "
                        f"flip (train it longer)")
    targets = [chosen_target if chosen_target is not None else (label + 1) % len(names) for label in labels]
    if any(t == label for t, label in zip(targets, labels)):
        raise ConfigError(f"--target {target}: some chosen images are already that class; choose another class")
    adversarial = targeted_adversarial(task, torch.cat(pixels), targets, epsilon=eps, steps=steps or 40, mean=mean,
                                       std=std)
    fooled = fooling_images(task, sorted(set(targets)), image_size=tuple(pixels[0].shape[-2:]), mean=mean, std=std,
                            steps=steps or 500)
    print(f"fool: targeted PGD with epsilon {eps:.4f} (pixel units, L-inf):")
    records = []
    for image_id, r in zip(ids, adversarial):
        records.append({"image": image_id, "label": r.original_label, "original_confidence": r.original_confidence,
                        "target": r.target, "predicted": r.predicted, "confidence": r.confidence,
                        "target_confidence": r.target_confidence, "budget": r.budget, "epsilon": r.epsilon,
                        "success": r.success, "steps": r.steps, "file": f"fool_adversarial_image{image_id:03d}.png"})
        print(f"  test image {image_id}: {names[r.original_label]} (p={r.original_confidence:.3f}) -> target "
              f"{names[r.target]}: budget {r.budget:.4f} <= {r.epsilon:.4f}, predicted {names[r.predicted]} "
              f"(p={r.confidence:.3f}), p(target)={r.target_confidence:.3f}, "
              f"{'success' if r.success else 'not flipped'} after {r.steps} steps")
    print("fool: images grown from noise (Nguyen et al.):")
    noise_records = []
    for f in fooled:
        noise_records.append({"target": f.target, "predicted": f.predicted, "confidence": f.confidence,
                              "target_confidence": f.target_confidence, "reached": f.reached, "steps": f.steps,
                              "file": f"fool_from_noise_{_stem(names[f.target])}.png"})
        print(f"  {names[f.target]}: p={f.target_confidence:.4f} after {f.steps} steps "
              f"({'reached' if f.reached else 'below'} 0.99)")
    flipped = sum(r.success for r in adversarial)
    return [Picture("fool_adversarial", f"fool: {flipped}/{len(adversarial)} test images flipped within epsilon "
                    f"{eps:.4f}", figure_to_array(adversarial_picture(adversarial, names)), "fool", None,
                    details={"epsilon": eps, "examples": records},
                    files={f"image{i:03d}": _pixels(r.adversarial) for i, r in zip(ids, adversarial)}),
            Picture("fool_from_noise", f"fool: images from noise for {', '.join(names[f.target] for f in fooled)}",
                    figure_to_array(fooling_picture(fooled, names)), "fool", None,
                    details={"images": noise_records}, files={_stem(names[f.target]): _pixels(f.image) for f in fooled})]


def dataset_methods() -> dict[str, Callable]:
    """The methods besides attribution: ``fn(task, datamodule, *, layers, num_images, target, **options) ->
    [Picture]`` (options: ``k``, ``channels``, ``compare``, ``label``, ``epsilon``, ``steps``; each takes what
    it uses)."""
    return {"filters": explain_filters, "topk": explain_topk, "layer_stats": explain_layer_stats,
            "maximise": explain_maximise, "fool": explain_fool}


def test_loader(datamodule):
    """The DataModule's test loader (its validation loader when it has no test data), unshuffled, in one process
    (``num_workers`` 0): the same images in the same order on every pass."""
    if hasattr(datamodule, "num_workers"):
        datamodule.num_workers = 0
    for stage, make in (("test", "test_dataloader"), ("validate", "val_dataloader")):
        try:
            datamodule.setup(stage)
            return getattr(datamodule, make)()
        except (UserError, OSError, AttributeError, KeyError, NotImplementedError):
            continue
    raise UserError(f"{type(datamodule).__name__} gives no test or validation images to explain")


def explain_batches(datamodule, n: int):
    """Batches of the DataModule's test split (``test_loader``) until ``n`` samples, the last one cut to size."""
    taken = 0
    for batch in test_loader(datamodule):
        size = len(batch["video"] if "video" in batch else batch["image"])
        keep = min(size, n - taken)
        yield _take(batch, keep), taken
        taken += keep
        if taken >= n:
            return


def _take(batch: Any, n: int) -> Any:
    if isinstance(batch, dict):
        return {k: _take(v, n) for k, v in batch.items()}
    if isinstance(batch, (torch.Tensor, list, tuple)):
        return batch[:n]
    return batch


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m densecnn explain``: build the task from config and checkpoint, explain test images, write the
    pictures, ``pictures.json`` and ``index.html``.

    Args:
        argv: the arguments (default: ``sys.argv[2:]``).

    Returns:
        The output folder.
    """
    from .export import build_from_config, reject_unknown_overrides

    args, overrides = parse_explain_args(sys.argv[2:] if argv is None else argv)
    reject_unknown_overrides("explain", overrides)
    extra = dataset_methods()
    if args.method not in METHODS and args.method not in extra:
        raise ConfigError(f"densecnn explain {args.method!r}: expected one of {', '.join((*METHODS, *extra))}")
    for name in ("num_images", "steps", "k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: at least 1")
    if args.compare is not None and args.method != "layer_stats":
        raise ConfigError(f"--compare: only layer_stats compares two checkpoints, not {args.method}")
    checkpoint_path = Path(args.ckpt_path)
    task, datamodule, _ = build_from_config(args.config, str(checkpoint_path), overrides)
    output = args.output or default_output(checkpoint_path, type(task).__name__, args.method)
    if args.method in extra:
        compare = (checkpoint_label(args.compare), load_like(task, args.compare)) if args.compare else None
        pictures = extra[args.method](task, datamodule, layers=args.layers, num_images=args.num_images,
                                      target=args.target, k=args.k, channels=args.channels, compare=compare,
                                      label=checkpoint_label(checkpoint_path), epsilon=args.epsilon,
                                      steps=args.steps)
    else:
        num_images = args.num_images or 4
        pictures = []
        for batch, first in explain_batches(datamodule, num_images):
            pictures += explain_task(task, batch, args.method, args.target, layers=args.layers, window=args.window,
                                     stride=args.stride, baseline=args.baseline, steps=args.steps or 32,
                                     region=args.region, boxes=args.boxes, max_boxes=args.max_boxes, first=first)
        if not pictures:
            raise UserError(f"nothing to explain in the first {num_images} test images (no detections above "
                            f"display_thresh? try --boxes ground_truth)")
    index = write_pictures(pictures, output, f"{args.method}: {type(task).__name__} ({task.hparams.backbone}) "
                                             f"from {checkpoint_path}")
    print(f"explained {len(pictures)} target(s) of {type(task).__name__} ({task.hparams.backbone}) from "
          f"{checkpoint_path} with {args.method}:")
    for p in pictures:
        print(f"  {output / (p.name + '.png')}  {p.title}")
    print(f"pictures and index written to {index}")
    return index


def run(argv: Sequence[str] | None = None) -> int:
    """``python -m densecnn explain``: a user error prints one line and a hint and returns 2."""
    from .cli import run_command

    return run_command(main, argv)
