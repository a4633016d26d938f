"""Detection data: COCO JSON and Pascal VOC (XML + ImageSets) readers, albumentations bbox-aware pipelines,
a dataset yielding torchvision-style targets, region proposals (selective search or a file) and a collate.

Conventions (the same for every detector in ``tasks.detection``):
  * boxes are ``xyxy`` in pixels, continuous coordinates (a pixel ``i`` spans ``[i, i + 1)``);
  * labels are ``1..K`` for the K object classes, ``0`` is background (torchvision's convention);
  * ``iscrowd`` marks COCO crowd regions (COCOeval matches any number of detections to one, with
    IoU = intersection / detection area); ``difficult`` marks Pascal VOC "difficult" objects, which
    evaluation ignores without being crowds (one detection of one counts neither way, COCOeval's ``ignore``
    flag; VOC's protocol). Training data leaves both out, as the Faster R-CNN reference code does.
  * Every image is resized (longest side to ``image_size``, then padded at the bottom/right to a square),
    so a batch stacks; ``scale`` maps predictions back to the original image: ``original = boxes / scale``.

Bad input: a box reaching outside its image is clipped; a degenerate box (a NaN or infinite coordinate,
negative or zero width/height, zero area after clipping) is dropped; each with one warning per annotation
file listing the image and annotation ids and, for dropped boxes, what is wrong; an unknown category id, a
duplicated COCO image id, a missing image file or a malformed annotation file raises ``DataError`` naming it.

``area`` (per object) is COCO's annotation area (the segment's, which COCO's small/medium/large AP buckets
use), or the box area where the file has none (VOC); it is scaled with the boxes (by ``scale ** 2``).
"""
from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from .image_folder import IMAGE_SUFFIXES, DataError, exif_orientation, read_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # S1 L688, the order of the VOC devkit
PROPOSAL_LABEL = 0  # proposals travel through albumentations next to the objects, marked with label 0
# The whole image travels as one more box with this label: where it lands after the pipeline's resize, random
# scale, crop and flip is the part of the network input that holds image rather than padding ("image_size").
FRAME_LABEL = -1


@dataclass
class DetectionRecord:
    """One image and its objects, as read from the annotation file (original pixel coordinates)."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xyxy
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # 1..K
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # 1 = a COCO crowd region
    ann_ids: list = field(default_factory=list)
    area: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))  # COCO area, else box area
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # 1 = VOC "difficult"

    @property
    def name(self) -> str:
        return Path(self.path).stem


class _BoxReport:
    """Collects clipped and dropped boxes of one annotation file and warns once about each kind."""

    def __init__(self, source: str | os.PathLike):
        self.source, self.clipped, self.dropped = str(source), [], []

    @staticmethod
    def problem(x0: float, y0: float, x1: float, y1: float) -> str | None:
        """What makes a (not yet clipped) xyxy box unusable, in words; None if nothing does."""
        # NaN compares false with everything, so without this check it would slip past the clipping below
        if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
            return f"non-finite coordinate(s) {[x0, y0, x1, y1]}"
        for side, size in (("width", x1 - x0), ("height", y1 - y0)):
            if size < 0:
                return f"negative {side} {size:g}"  # not "zero area": the box is inverted, say so
            if size == 0:
                return f"zero area ({side} 0)"
        return None

    def sanitize(self, box: Sequence[float], width: int, height: int, where: str) -> list[float] | None:
        x0, y0, x1, y1 = (float(v) for v in box)
        problem = self.problem(x0, y0, x1, y1)
        if problem is not None:
            self.dropped.append(f"{where}: {problem}")
            return None
        clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
                   min(max(y1, 0.0), height)]
        if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
            self.dropped.append(f"{where}: zero area after clipping to the {width}x{height} image")
            return None
        if clipped != [x0, y0, x1, y1]:
            self.clipped.append(where)
        return clipped

    def warn(self) -> None:
        for kind, items, what in (("clipped", self.clipped, "reach outside their image; clipped to it"),
                                  ("dropped", self.dropped, "are degenerate; dropped")):
            if items:
                shown = "; ".join(items[:10]) + (f"; and {len(items) - 10} more" if len(items) > 10 else "")
                warnings.warn(f"{self.source}: {len(items)} box(es) {what}: {shown}", stacklevel=3)


def _as_arrays(record: DetectionRecord, boxes: list, labels: list, crowd: list, ann_ids: list,
               area: list | None = None, difficult: list | None = None) -> None:
    record.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    record.labels = np.asarray(labels, np.int64)
    record.iscrowd = np.asarray(crowd, np.int64)
    record.difficult = np.asarray(np.zeros(len(labels)) if difficult is None else difficult, np.int64).reshape(-1)
    record.ann_ids = list(ann_ids)
    box_area = (record.boxes[:, 2] - record.boxes[:, 0]) * (record.boxes[:, 3] - record.boxes[:, 1])
    # float64: float32 would move an area lying near a size-bucket boundary (32 ** 2, 96 ** 2)
    record.area = (box_area if area is None else np.asarray(area)).astype(np.float64).reshape(-1)


# ---- COCO -------------------------------------------------------------------------------------------------
def read_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
              category_ids: Sequence[int] | None = None) -> tuple[list[DetectionRecord], list[int], list[str]]:
    """Read a COCO ``instances_*.json``.

    Returns ``(records, category_ids, class_names)``: label ``k`` (1-based) is category ``category_ids[k-1]``.
    Pass the training split's ``category_ids`` when reading val/test so labels mean the same everywhere.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    if not annotation_file.is_file():
        raise DataError(f"{annotation_file}: annotation file not found")
    try:
        data = json.loads(annotation_file.read_text())
        images = {}
        for im in data["images"]:
            # a repeated id would silently replace one image and hand its annotations to the other
            if int(im["id"]) in images:
                raise DataError(f"{annotation_file}: duplicate image id {int(im['id'])} in 'images' "
                                f"({images[int(im['id'])].get('file_name')!r} and {im.get('file_name')!r})")
            images[int(im["id"])] = im
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        annotations = data.get("annotations", [])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{annotation_file}: malformed annotation file, not valid JSON ({err})") from err
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{annotation_file}: malformed COCO annotation file: missing or invalid {err} "
                        f"(expected 'images', 'annotations' and 'categories')") from err
    names_by_id = {int(c["id"]): str(c["name"]) for c in categories}
    if category_ids is None:
        category_ids = list(names_by_id)
    else:
        category_ids = [int(c) for c in category_ids]
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    class_names = [names_by_id.get(cid, str(cid)) for cid in category_ids]

    per_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    for index, ann in enumerate(annotations):
        where = f"annotation id {ann.get('id', f'#{index}')}"
        try:
            image_id, category = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{annotation_file}: malformed {where}: needs image_id, category_id and a 4-number "
                            f"bbox ({err!r})") from err
        if category not in label_of:
            raise DataError(f"{annotation_file}: {where} has unknown category id {category} "
                            f"(known: {sorted(label_of)})")
        if image_id not in per_image:
            raise DataError(f"{annotation_file}: {where} refers to image id {image_id}, which is not in 'images'")
        per_image[image_id].append({**ann, "_box": [x, y, x + w, y + h], "_label": label_of[category],
                                    "_where": where})

    report = _BoxReport(annotation_file)
    records = []
    for image_id, info in sorted(images.items()):
        path = image_dir / info["file_name"]
        if not path.is_file():
            raise DataError(f"{annotation_file}: image file {path} (image id {image_id}) not found")
        width, height = int(info.get("width", 0)), int(info.get("height", 0))
        if width <= 0 or height <= 0:
            height, width = read_rgb(path).shape[:2]
        record = DetectionRecord(image_id, str(path), width, height)
        boxes, labels, crowd, ids, areas = [], [], [], [], []
        for ann in per_image[image_id]:
            box = report.sanitize(ann["_box"], width, height, f"image {image_id} ({info['file_name']}) "
                                                                  f"{ann['_where']}")
            if box is not None:
                boxes.append(box), labels.append(ann["_label"]), crowd.append(int(ann.get("iscrowd", 0)))
                ids.append(ann.get("id"))
                # COCO's size buckets (APs/APm/APl, ARs/m/l) use the annotation's area, not the box's
                area = float(ann.get("area") or 0.0)
                areas.append(area if np.isfinite(area) and area > 0 else (box[2] - box[0]) * (box[3] - box[1]))
        _as_arrays(record, boxes, labels, crowd, ids, areas)
        records.append(record)
    report.warn()
    return records, list(category_ids), class_names


# ---- Pascal VOC -------------------------------------------------------------------------------------------
def read_voc(root: str | os.PathLike, split: str, class_names: Sequence[str] = VOC_CLASSES
             ) -> list[DetectionRecord]:
    """Read ``root/ImageSets/Main/<split>.txt``, ``root/Annotations/<id>.xml`` and ``root/JPEGImages/<id>.*``
    (the layout of ``VOCdevkit/VOC2007``). VOC's 1-based pixel indices become continuous coordinates
    ``(xmin - 1, ymin - 1, xmax, ymax)``; ``difficult`` objects are kept, flagged in ``difficult`` (they are
    no crowd regions: ``iscrowd`` stays 0)."""
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: image set file not found (expected a VOCdevkit/VOC20xx folder as root)")
    label_of = {name: i + 1 for i, name in enumerate(class_names)}
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    report = _BoxReport(split_file)
    records = []
    for index, name in enumerate(ids):
        xml_path = root / "Annotations" / f"{name}.xml"
        if not xml_path.is_file():
            raise DataError(f"{xml_path}: annotation file not found (listed in {split_file})")
        try:
            tree = ET.parse(xml_path).getroot()
            width, height = int(tree.find("size/width").text), int(tree.find("size/height").text)
            file_name = tree.findtext("filename") or f"{name}.jpg"
            objects = [(obj.findtext("name").strip(), int(obj.findtext("difficult") or 0),
                        [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")])
                       for obj in tree.findall("object")]
        except ET.ParseError as err:
            raise DataError(f"{xml_path}: malformed annotation file, not valid XML ({err})") from err
        except (AttributeError, TypeError, ValueError) as err:
            raise DataError(f"{xml_path}: malformed VOC annotation: needs size/width, size/height and, per "
                            f"object, name and bndbox/xmin..ymax ({err})") from err
        path = root / "JPEGImages" / file_name
        if not path.is_file():
            candidates = [root / "JPEGImages" / f"{name}{s}" for s in IMAGE_SUFFIXES]
            path = next((c for c in candidates if c.is_file()), path)
            if not path.is_file():
                raise DataError(f"{xml_path}: image file {path} not found")
        record = DetectionRecord(index, str(path), width, height)
        boxes, labels, flags, obj_ids = [], [], [], []
        for obj_index, (cls, difficult, (x0, y0, x1, y1)) in enumerate(objects):
            if cls not in label_of:
                raise DataError(f"{xml_path}: object {obj_index} has unknown class {cls!r} "
                                f"(classes: {', '.join(class_names)})")
            box = report.sanitize([x0 - 1, y0 - 1, x1, y1], width, height,
                                  f"image {name} annotation {obj_index}")
            if box is not None:
                boxes.append(box), labels.append(label_of[cls]), flags.append(difficult), obj_ids.append(obj_index)
        _as_arrays(record, boxes, labels, [0] * len(boxes), obj_ids, difficult=flags)
        records.append(record)
    report.warn()
    return records


def image_records(folder: str | os.PathLike) -> list[DetectionRecord]:
    """Unannotated images (a folder, searched recursively) for ``predict``."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder}: no images to predict on")
    records = []
    for index, path in enumerate(paths):
        height, width = read_rgb(path).shape[:2]
        records.append(DetectionRecord(index + 1, str(path), width, height))
    return records


# ---- region proposals (R-CNN, Fast R-CNN) -----------------------------------------------------------------
def selective_search(image: np.ndarray, mode: str = "fast", max_proposals: int = 2000,
                     min_size: int = 4) -> np.ndarray:
    """Selective search (Uijlings et al.) from OpenCV's contrib module: ``(N, 4)`` xyxy float32 boxes, in
    the order OpenCV ranks them. ``mode`` is ``fast`` or ``quality``, the two settings R-CNN describes."""
    try:
        import cv2
        segmentation = cv2.ximgproc.segmentation
    except (ImportError, AttributeError) as err:
        raise ImportError("selective search needs OpenCV's contrib modules (cv2.ximgproc): "
                          "pip install opencv-contrib-python-headless (the same version as the "
                          "opencv-python-headless albumentations installs, installed after it), or give a "
                          "proposals file instead") from err
    if mode not in ("fast", "quality"):
        raise ValueError(f"selective search mode must be 'fast' or 'quality', got {mode!r}")
    search = segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    search.switchToSelectiveSearchFast() if mode == "fast" else search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    rects = rects[(rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)][:max_proposals]
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def load_proposals(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A proposals file: JSON ``{"<image key>": [[x0, y0, x1, y1], ...], ...}`` in original pixel coordinates,
    best first. The key is the COCO image id (as a string) or, for VOC, the image name (``000005``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: proposals file not found")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("the top level must be an object mapping image keys to box lists")
        return {str(k): np.asarray(v, np.float32).reshape(-1, 4) for k, v in raw.items()}
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise DataError(f"{path}: malformed proposals file ({err}); expected "
                        f"{{\"<image id>\": [[x0, y0, x1, y1], ...]}}") from err


def save_proposals(proposals: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write region proposals as JSON ``{image key: [[x0, y0, x1, y1], ...]}`` (rounded to 0.01 px), atomically.

    Args:
        proposals: boxes per image key, best first (R-CNN Section 2.1: selective search).
        path: the JSON file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: np.round(v, 2).tolist() for k, v in proposals.items()}))
    os.replace(tmp, path)


def record_key(record: DetectionRecord, by: str = "id") -> str:
    """The key of an image in a proposals file: its COCO image id, or its file name (VOC).

    Args:
        record: the image's record.
        by: ``"id"`` or ``"name"``.
    """
    return str(record.image_id) if by == "id" else record.name


# ---- pipelines --------------------------------------------------------------------------------------------
def build_detection_pipeline(image_size: int, *, train: bool, mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD, hflip: float = 0.5,
                             scale_range: tuple[float, float] = (0.75, 1.25), min_visibility: float = 0.3,
                             bbox_format: str = "pascal_voc") -> A.Compose:
    """Bbox-aware albumentations pipeline ending in a ``image_size`` square, normalised CHW tensor.

    Evaluation: longest side to ``image_size``, padding at the bottom/right (so ``boxes / scale`` recovers
    original coordinates). Training adds a random scale in ``scale_range``, a random ``image_size`` crop
    (boxes keeping less than ``min_visibility`` of their area are dropped) and a horizontal flip.
    ``bbox_format`` is albumentations' name: ``pascal_voc`` (xyxy pixels, what the datasets hand over) or
    ``coco`` (xywh).
    """
    steps: list[A.BasicTransform] = [A.LongestMaxSize(max_size=image_size)]
    if train:
        lo, hi = scale_range
        steps += [A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), p=1.0),
                  A.PadIfNeeded(image_size, image_size, position="top_left", border_mode=0, fill=0),
                  A.RandomCrop(image_size, image_size), A.HorizontalFlip(p=hflip)]
    else:
        steps += [A.PadIfNeeded(image_size, image_size, position="top_left", border_mode=0, fill=0)]
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps, bbox_params=A.BboxParams(format=bbox_format, label_fields=["labels", "iscrowd"],
                                                     min_visibility=min_visibility if train else 0.0,
                                                     clip=True, filter_invalid_bboxes=True))


class DetectionDataset(Dataset):
    """Samples ``{"image", "target": {"boxes", "labels", "iscrowd", "difficult", "area"}, "image_id", "path", "scale",
    "orig_size", "image_size"[, "proposals"]}`` from records, through a bbox-aware albumentations pipeline.
    ``image_size`` is ``(height, width)`` of the part of the network input that is image, not padding: the
    detectors clip boxes to it and the RPN proposes only inside it (torchvision's ``image_sizes``).

    Args:
        records: from ``read_coco``/``read_voc``/``image_records``.
        transform: a ``build_detection_pipeline`` (``pascal_voc`` format); it must resize to a fixed square.
        keep_ignored: keep crowd and difficult objects (evaluation) or leave them out (training).
        proposals: region proposals per record key (original coordinates); they go through the same
            geometric transform as the objects.
        proposal_key: key proposals by COCO image ``id`` or by image ``name`` (VOC).
    """

    def __init__(self, records: Sequence[DetectionRecord], transform: Callable, *, keep_ignored: bool = True,
                 proposals: dict[str, np.ndarray] | None = None, proposal_key: str = "id",
                 max_proposals: int = 2000):
        self.records = list(records)
        self.transform = transform
        self.keep_ignored = keep_ignored
        self.proposals = proposals
        self.proposal_key = proposal_key
        self.max_proposals = max_proposals

    def __len__(self) -> int:
        return len(self.records)

    def proposals_of(self, record: DetectionRecord) -> np.ndarray:
        key = record_key(record, self.proposal_key)
        if key not in self.proposals:
            raise DataError(f"no region proposals for image {key} ({record.path}) in the proposals")
        boxes = self.proposals[key][: self.max_proposals].copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, record.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, record.height)
        return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]

    def read_image(self, record: DetectionRecord) -> np.ndarray:
        """The record's image (a streaming dataset reads it from its chunks: ``densecnn.data.streaming``)."""
        return read_rgb(record.path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.read_image(record)
        check_image_size(record, image)
        difficult = record.difficult if len(record.difficult) == len(record.labels) else \
            np.zeros(len(record.labels), np.int64)  # records built by hand without the flag
        keep = np.ones(len(record.labels), bool) if self.keep_ignored else (record.iscrowd == 0) & (difficult == 0)
        boxes, labels, crowd, difficult = record.boxes[keep], record.labels[keep], record.iscrowd[keep], difficult[keep]
        area = record.area[keep] if len(record.area) == len(record.labels) else \
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # records built by hand without area
        if self.proposals is not None:
            props = self.proposals_of(record)
            boxes = np.concatenate([boxes, props])
            labels = np.concatenate([labels, np.full(len(props), PROPOSAL_LABEL, np.int64)])
            crowd = np.concatenate([crowd, np.zeros(len(props), np.int64)])
            difficult = np.concatenate([difficult, np.zeros(len(props), np.int64)])
            area = np.concatenate([area, np.zeros(len(props))])
        boxes = np.concatenate([boxes.reshape(-1, 4), [[0, 0, record.width, record.height]]]).astype(np.float32)
        labels = np.concatenate([labels, [FRAME_LABEL]]).astype(np.int64)
        # the pipeline's ``iscrowd`` label field carries each box's index, so the per-box values the pipeline
        # does not know about (area) follow the boxes it keeps; crowd and difficult flags are looked up by it
        out = self.transform(image=image, bboxes=boxes, labels=labels, iscrowd=np.arange(len(boxes)))
        kept = np.asarray(out["iscrowd"], np.int64).reshape(-1)
        out_boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        out_labels = torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1))
        crowd, difficult = np.concatenate([crowd, [0]]), np.concatenate([difficult, [0]])
        out_crowd = torch.as_tensor(crowd[kept].astype(np.int64))
        out_difficult = torch.as_tensor(difficult[kept].astype(np.int64))
        image_t = out["image"]
        frame = out_labels == FRAME_LABEL
        image_size = content_size(out_boxes[frame], tuple(image_t.shape[-2:]))
        out_boxes, out_labels, out_crowd, kept = out_boxes[~frame], out_labels[~frame], out_crowd[~frame], kept[~frame.numpy()]
        out_difficult = out_difficult[~frame]
        objects = out_labels != PROPOSAL_LABEL
        scale = max(image_t.shape[-2:]) / max(record.height, record.width)
        # area scales like the boxes (by scale ** 2), so ``to_original`` (area / scale ** 2) gives back the
        # annotation's own area; with the float32 scale the batch carries, so the round trip is exact to float64
        # rounding. Crops of the training pipeline are not accounted for (training is not evaluated).
        out_area = torch.as_tensor(area[kept] * float(np.float32(scale)) ** 2, dtype=torch.float64)
        sample = {"image": image_t,
                  "target": {"boxes": out_boxes[objects], "labels": out_labels[objects],
                             "iscrowd": out_crowd[objects], "difficult": out_difficult[objects],
                             "area": out_area[objects]},
                  "image_id": record.image_id, "path": record.path,
                  "scale": scale,
                  "orig_size": (record.height, record.width),
                  "image_size": image_size}
        if self.proposals is not None:
            sample["proposals"] = out_boxes[~objects]
        return sample


def check_image_size(record: DetectionRecord, image: np.ndarray) -> None:
    """The decoded image (EXIF orientation applied, ``read_rgb``) must have the annotation's size; when it
    has it with width and height swapped, the message says that the EXIF orientation is the likely cause."""
    height, width = image.shape[:2]
    if (height, width) == (record.height, record.width):
        return
    message = f"{record.path}: image is {width}x{height} but its annotation says {record.width}x{record.height}"
    if (width, height) == (record.height, record.width):
        # the orientation is wrong, not the image: say which way round the reader and the annotation are
        orientation = exif_orientation(record.path)
        message += ("; swapping width and height would match: the annotation is for the image turned by 90 "
                    "degrees. Images are read as displayed, with their EXIF orientation applied ")
        message += (f"(this file's orientation tag is {orientation}, a quarter turn), so the annotation's size "
                    f"and boxes must be those of the displayed image" if orientation in (5, 6, 7, 8) else
                    "(this file has no quarter-turn orientation tag): are the annotation's width and height "
                    "swapped, or was it made on a rotated copy?")
    raise DataError(message)


def content_size(frame: torch.Tensor, padded: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the image content in the network input: the far corner of the transformed
    whole-image box (the evaluation pipeline pads at the bottom/right; a training crop or flip can move the
    content, and then the box's far edge still bounds it). The padded size when the box was cropped away."""
    if len(frame) == 0:
        return padded
    x1, y1 = frame[0, 2].item(), frame[0, 3].item()
    return min(padded[0], int(math.ceil(y1 - 1e-3))), min(padded[1], int(math.ceil(x1 - 1e-3)))


def detection_collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images (the pipelines make them one size); targets and proposals stay per-image lists."""
    batch = {"image": torch.stack([s["image"] for s in samples]),
             "target": [s["target"] for s in samples],
             "image_id": torch.as_tensor([s["image_id"] for s in samples]),
             "path": [s["path"] for s in samples],
             "scale": torch.as_tensor([s["scale"] for s in samples], dtype=torch.float32),
             "orig_size": torch.as_tensor([s["orig_size"] for s in samples]),
             "image_size": torch.as_tensor([s.get("image_size", tuple(s["image"].shape[-2:])) for s in samples])}
    if "proposals" in samples[0]:
        batch["proposals"] = [s["proposals"] for s in samples]
    return batch
