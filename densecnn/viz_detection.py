"""Pictures of detections: boxes with class names and scores drawn on the image (PIL only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .viz import image_grid

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def class_colour(label: int) -> tuple[int, int, int]:
    """The drawing colour of a class label (a fixed palette, cycled).

    Args:
        label: the class index.
    """
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_detections(image: np.ndarray, boxes, labels, scores=None, class_names: Sequence[str] | None = None,
                    gt_boxes=None, min_size: int = 256) -> np.ndarray:
    """Draw ``boxes`` (xyxy pixels of ``image``) with "name score" captions; ground truth, when given, in
    thin white. Labels are 1..K (``class_names[label - 1]``). Small images are enlarged to ``min_size`` so
    the captions stay legible. Returns an HxWx3 uint8 array."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    factor = max(1.0, min_size / max(image.shape[:2]))
    canvas = Image.fromarray(np.ascontiguousarray(image))
    if factor > 1:
        canvas = canvas.resize((round(canvas.width * factor), round(canvas.height * factor)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if gt_boxes is not None:
        for box in torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4).mul(factor).tolist():
            draw.rectangle(box, outline=(255, 255, 255), width=1)
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    scores = torch.as_tensor(scores).reshape(-1).tolist() if scores is not None else [None] * len(labels)
    for box, label, score in zip(boxes.mul(factor).tolist(), labels, scores):
        colour = class_colour(label)
        draw.rectangle(box, outline=colour, width=2)
        name = class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)
        caption = name if score is None else f"{name} {score:.2f}"
        x, y = box[0], max(0.0, box[1] - 11)
        draw.rectangle([x, y, x + 6 * len(caption) + 2, y + 11], fill=colour)
        draw.text((x + 1, y), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def detection_grid(images: Sequence[np.ndarray], detections: Sequence[dict], class_names: Sequence[str],
                   targets: Sequence[dict] | None = None, columns: int = 4, cell: int = 256) -> np.ndarray:
    """Several images with their detections (and ground truth) tiled into one picture."""
    pictures = [draw_detections(image, d["boxes"].cpu(), d["labels"].cpu(), d["scores"].cpu(), class_names,
                                None if targets is None else targets[i]["boxes"].cpu(), min_size=cell)
                for i, (image, d) in enumerate(zip(images, detections))]
    return image_grid(pictures, columns=columns, cell=cell)


def precision_recall_picture(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "",
                             max_curves: int = 10, size: tuple[float, float] = (6.0, 4.5)) -> np.ndarray:
    """Precision against recall, one curve per class (``name -> (recall, precision)``, detections by
    decreasing score, as ``VOCMeanAP.curves``), drawn with matplotlib; with more than ``max_curves`` classes,
    the first ``max_curves`` of ``curves`` (pass them ordered, e.g. by number of objects). HxWx3 uint8."""
    # the Agg canvas renders into memory: no display, no pyplot state shared with the user's notebook
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (name, (recall, precision)) in enumerate(list(curves.items())[:max_curves]):
        # a step curve: precision changes only where a detection is added (the curve the APs integrate)
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision]), where="post",
                  color=np.asarray(class_colour(index + 1)) / 255, label=str(name))
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
             title=title + (f" ({max_curves} of {len(curves)} classes)" if len(curves) > max_curves else ""))
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
