"""``python -m densecnn explain``: what a trained checkpoint looks at, as pictures, for every task family.

    python -m densecnn explain <method> --config C.yaml --ckpt_path X [--num-images N] [--target T]
        [--layers L ...] [--window H W] [--stride H W] [--region TOP LEFT BOTTOM RIGHT] [--boxes detections|
        ground_truth] [--output DIR] [--data.* / --model.* overrides]

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
occlusion, integrated_gradients; and ``filters`` (``densecnn.explain.filter_picture`` of the first convolution or
of each ``--layers``). Further methods register in ``dataset_methods``.
"""
from __future__ import annotations

import argparse
import html
import json
import os
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
from densecnn.explain.attribution import (HEAT_LABELS, METHODS, attribute, attribution_figure, frame_strip_figure,
                                          heat_map)
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
        entries.append({"name": p.name, "file": f"{p.name}.png", "title": p.title, "method": p.method,
                        "value": p.value})
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
    parent = checkpoint_path.resolve().parent
    if parent.name == "checkpoints":
        return parent.parent / "explain" / method
    return Path("explain") / task_name / method


def parse_explain_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="densecnn explain", description="Pictures of what a checkpoint looks at on test images. Other "
        "--key value arguments (--model.init_args.x, --data.init_args.y) override the config.")
    parser.add_argument("method", help=f"one of {', '.join(METHODS)}, or a densecnn.explain method "
                                       f"({', '.join(dataset_methods()) or 'none installed'})")
    parser.add_argument("--config", "-c", action="append", required=True, help="the run's YAML config")
    parser.add_argument("--ckpt_path", "--ckpt-path", required=True, help="the checkpoint to explain")
    parser.add_argument("--num-images", "--num_images", type=int, default=4, help="test images to explain")
    parser.add_argument("--target", default=None, help="class name or index (default: the predicted class); "
                        "dense: depth or semantic:<class>; detection: explain only boxes of this class")
    parser.add_argument("--layers", nargs="+", default=None, help="module names (backbone.layer3 or layer3): "
                        "Grad-CAM's layers, or the layers of a dataset-level method")
    parser.add_argument("--window", type=int, nargs="+", default=None, help="occlusion window (H W; video T H W)")
    parser.add_argument("--stride", type=int, nargs="+", default=None, help="occlusion stride (default half the "
                        "window)")
    parser.add_argument("--baseline", type=float, default=0.0, help="occlusion / integrated gradients baseline "
                        "(in normalised input units: 0 is the data's mean colour)")
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients' steps")
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


def dataset_methods() -> dict[str, Callable]:
    """The methods besides attribution: ``fn(task, datamodule, *, layers, num_images, target) -> [Picture]``."""
    return {"filters": explain_filters}


def explain_batches(datamodule, n: int):
    """Batches of the DataModule's test split (its validation split when it has no test data) until ``n``
    samples, the last one cut to size; one process (``num_workers`` 0)."""
    if hasattr(datamodule, "num_workers"):
        datamodule.num_workers = 0
    loader = None
    for stage, make in (("test", "test_dataloader"), ("validate", "val_dataloader")):
        try:
            datamodule.setup(stage)
            loader = getattr(datamodule, make)()
            break
        except (UserError, OSError, AttributeError, KeyError, NotImplementedError):
            continue
    if loader is None:
        raise UserError(f"{type(datamodule).__name__} gives no test or validation images to explain")
    taken = 0
    for batch in loader:
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
    from .export import build_from_config

    args, overrides = parse_explain_args(sys.argv[2:] if argv is None else argv)
    unknown = [a for a in overrides if a.startswith("-") and not a.startswith(("--model.", "--data.", "--trainer.",
                                                                                 "--seed_everything"))]
    if unknown:
        raise ConfigError(f"densecnn explain: unknown argument(s) {', '.join(unknown)}; see densecnn explain --help")
    extra = dataset_methods()
    if args.method not in METHODS and args.method not in extra:
        raise ConfigError(f"densecnn explain {args.method!r}: expected one of {', '.join((*METHODS, *extra))}")
    if args.num_images < 1:
        raise ConfigError(f"--num-images {args.num_images}: at least 1")
    checkpoint_path = Path(args.ckpt_path)
    task, datamodule, _ = build_from_config(args.config, str(checkpoint_path), overrides)
    output = args.output or default_output(checkpoint_path, type(task).__name__, args.method)
    if args.method in extra:
        pictures = extra[args.method](task, datamodule, layers=args.layers, num_images=args.num_images,
                                      target=args.target)
    else:
        pictures = []
        for batch, first in explain_batches(datamodule, args.num_images):
            pictures += explain_task(task, batch, args.method, args.target, layers=args.layers, window=args.window,
                                     stride=args.stride, baseline=args.baseline, steps=args.steps,
                                     region=args.region, boxes=args.boxes, max_boxes=args.max_boxes, first=first)
        if not pictures:
            raise UserError(f"nothing to explain in the first {args.num_images} test images (no detections above "
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
    from .cli import user_error_message

    try:
        main(argv)
    except UserError as err:
        if os.environ.get("DENSECNN_DEBUG"):
            raise
        print(user_error_message(err), file=sys.stderr)
        return 2
    return 0
