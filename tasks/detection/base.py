"""What the four detectors share: class bookkeeping, evaluation (COCO AP + VOC mAP, once per epoch),
pictures, and predictions written as a COCO results JSON.

A detector implements ``training_losses(batch) -> dict`` and ``detect(images, batch) -> list[dict]``
(boxes in the network input's pixels); everything else lives here. Batches come from
``tasks.datamodules.detection`` (``densecnn.data.detection.detection_collate``): labels 1..K, 0 background.
"""
from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from densecnn.data import read_rgb
from densecnn.heads.detection import freeze_batchnorm, set_trainable_stages
from densecnn.metrics.detection import DetectionMetrics
from densecnn.viz import save_png, to_uint8_images
from densecnn.viz_detection import detection_grid, draw_detections

from ..base import BaseTask


class DetectionTask(BaseTask):
    """What the four detectors share: box targets in COCO/VOC format, COCO AP (pycocotools) and VOC mAP computed
    once per epoch, per-class AP tables, pictures of detections and the COCO results JSON of ``predict``.
    """
    monitor = "val/map_50"
    monitor_mode = "max"
    #: R-CNN and Fast R-CNN classify region proposals that come with the batch
    needs_proposals: bool = False

    def __init__(self, backbone: str = "resnet18", num_classes: int = 20, weights: str | None = None,
                 class_names: list[str] | None = None, category_ids: list[int] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 frozen_bn: bool = False, trainable_stages: int | None = None, display_thresh: float = 0.3,
                 **kwargs: Any):
        """
        Args:
            backbone, weights: see ``BaseTask``; any registered backbone (its ``forward_features``).
            num_classes: object classes K (background excluded); must match the data.
            class_names, category_ids: filled from the data at fit time and kept in the checkpoint;
                ``category_ids`` are the COCO ids written in predictions (label k -> ``category_ids[k-1]``).
            score_thresh, nms_thresh, detections_per_img: test-time filtering: class scores below
                ``score_thresh`` are dropped, boxes of one class overlapping more than ``nms_thresh`` are
                suppressed (per-class NMS), and at most ``detections_per_img`` are kept.
            frozen_bn: replace the backbone's batch norm by ``FrozenBatchNorm2d`` (S1 L650).
            display_thresh: the score from which a detection is drawn in pictures (the logged examples and
                the prediction writer's ``images/``); the results themselves keep every detection.
            trainable_stages: train only the last N of the backbone's declared stages (``stage_parameters``:
                one per ``feature_info`` map, the stem in the first; 3: res3-res5 for ResNets, as torchvision's
                reference) and freeze the earlier ones; ``null`` trains everything.
        """
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.init_args.class_names has {len(class_names)} names for num_classes={num_classes}")
        super().__init__(backbone=backbone, weights=weights, **kwargs)

    # ---- what a detector provides ------------------------------------------------------------------------
    @abstractmethod
    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """The detector's named training losses on one batch (they are summed)."""

    @abstractmethod
    def detect(self, images: torch.Tensor, batch: dict) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"boxes"`` (xyxy, network-input pixels), ``"scores", "labels"}`` (labels 1..K)."""

    def build_detection_backbone(self) -> nn.Module:
        """The backbone as a feature extractor, with ``frozen_bn`` and ``trainable_stages`` applied."""
        body = self.build_backbone(num_classes=0)
        if self.hparams.frozen_bn:
            freeze_batchnorm(body)
        set_trainable_stages(body, self.hparams.trainable_stages)
        return body

    def freeze_unused_backbone(self, indices: Sequence[int]) -> list[str]:
        """Freeze backbone parameters the detector never uses (see ``freeze_unused_parameters``), probing
        with an image of the backbone's input size."""
        from densecnn.backbones import get_entry
        from densecnn.heads.detection import freeze_unused_parameters

        h = self.hparams
        entry = get_entry(h.backbone)
        in_chans = int((h.backbone_kwargs or {}).get("in_chans", entry.input_size[0]))
        return freeze_unused_parameters(self.backbone, indices, in_chans, int(entry.input_size[-1]))

    # ---- classes -----------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names or [str(i + 1) for i in range(self.hparams.num_classes)])

    @property
    def category_ids(self) -> list[int]:
        return list(self.hparams.category_ids or range(1, self.hparams.num_classes + 1))

    def setup(self, stage: str) -> None:
        datamodule = self.sync_class_names()
        names = getattr(datamodule, "class_names", None)
        if names:
            self.hparams.category_ids = list(getattr(datamodule, "category_ids", None) or range(1, len(names) + 1))

    # ---- metrics -----------------------------------------------------------------------------------------
    def configure_metrics(self) -> None:
        # detections are evaluated on val and test only: in training the detectors sample regions instead
        self.metrics = nn.ModuleDict({f"{stage}_metrics": self.make_metrics().clone(prefix=f"{stage}/")
                                      for stage in ("val", "test")})

    def make_metrics(self) -> DetectionMetrics:
        return DetectionMetrics()

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["image"])

    def _shared_step(self, batch: dict, batch_idx: int, stage: str) -> torch.Tensor | None:
        batch_size = self.batch_size_of(batch)
        if stage == "train":
            loss, losses = self.compute_loss(batch, stage)
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
            self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                          batch_size=batch_size)
            return loss
        detections = self.detect(batch["image"], batch)
        self.update_metrics_float32(stage, detections, batch)
        if batch_idx == 0 and not self.trainer.sanity_checking and not self.tuning():
            self.log_examples(stage, batch, detections)
        return None

    def log_metrics_without_batches(self, stage: str) -> None:
        """Nothing to add: evaluation logs only at epoch end, which every rank runs (``_log_epoch_metrics``)."""

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
        """The summed training loss and its named parts (detectors are evaluated by ``detect``, not a loss)."""
        losses = self.training_losses(batch)
        return sum(losses.values()), losses

    @staticmethod
    def image_sizes(batch: dict) -> list[tuple[int, int]]:
        """``(height, width)`` of each image's content in the network input (the rest is padding), from the
        batch's ``image_size``; the whole input where a batch does not carry it."""
        if "image_size" not in batch:
            return [tuple(batch["image"].shape[-2:])] * len(batch["image"])
        return [(int(h), int(w)) for h, w in batch["image_size"].tolist()]

    @staticmethod
    def to_original(detections: Sequence[dict], batch: dict) -> list[dict]:
        """Boxes (and a target's ``area``, which scales by ``scale ** 2``) from the network input back to the
        original image's pixels (the pipeline only scaled)."""
        scale = batch["scale"].to(batch["image"].device)
        out = []
        for i, d in enumerate(detections):
            out.append({**d, "boxes": d["boxes"] / scale[i]})
            if "area" in d:
                out[-1]["area"] = d["area"] / scale[i].to(d["area"].dtype) ** 2
        return out

    def update_metrics(self, stage: str, outputs: Sequence[dict], batch: dict) -> None:
        preds = [{k: d[k].detach() for k in ("boxes", "scores", "labels")} for d in self.to_original(outputs, batch)]
        targets = self.to_original(batch["target"], batch)
        self.metrics_for(stage).update(preds, targets)

    def _log_epoch_metrics(self, stage: str) -> tuple[dict, dict] | None:
        """Compute, log and reset the stage's metrics; returns everything computed (per-class values too)
        and the VOC precision/recall curves per class label, None in the sanity check."""
        metrics = self.metrics_for(stage)
        if self.trainer.sanity_checking:
            metrics.reset()
            return None
        # every rank computes (a collective under DDP), even one that saw no image
        computed = metrics.compute()  # synced across DDP ranks by torchmetrics
        curves = dict(metrics["voc"].curves)
        metrics.reset()
        self.log_dict(DetectionMetrics.scalars(computed), prog_bar=stage == "val", sync_dist=False)
        return computed, curves

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        result = self._log_epoch_metrics("test")
        if result is not None and self.trainer.is_global_zero:
            self.write_per_class_report("test", *result)

    def write_per_class_report(self, stage: str, computed: dict, curves: dict) -> dict[str, Path]:
        """``<run dir>/<stage>_per_class_ap.csv`` and ``.md`` (class, AP50 VOC area, AP50 VOC07 11-point,
        COCO AP, counted and ignored objects: the metrics' own per-class values) and a precision/recall
        picture at IoU 0.5 (``pictures/<stage>_pr_curve_*.png``, the ten classes with most objects)."""
        from densecnn.metrics.detection import per_class_csv, per_class_markdown
        from densecnn.viz_detection import precision_recall_picture

        names = self.class_names
        rows = [{**row, "class": names[row["label"] - 1]}
                for row in DetectionMetrics.per_class_table(computed, len(names))]
        scalars = {k.rsplit("/", 1)[-1]: float(v) for k, v in DetectionMetrics.scalars(computed).items()}
        means = {"ap50_voc": scalars["map_voc"], "ap50_voc07": scalars["map_voc07"], "ap_coco": scalars["map"]}
        means = {k: (None if v <= -1 else v) for k, v in means.items()}
        folder = self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"csv": folder / f"{stage}_per_class_ap.csv", "markdown": folder / f"{stage}_per_class_ap.md"}
        paths["csv"].write_text(per_class_csv(rows))
        paths["markdown"].write_text(per_class_markdown(rows, means))
        by_objects = sorted((row for row in rows if row["label"] in curves), key=lambda r: -r["gt_objects"])
        picture = precision_recall_picture({row["class"]: curves[row["label"]] for row in by_objects},
                                           title=f"{stage}: precision/recall at IoU 0.5 (VOC matching)")
        paths["pr_curve"] = self.log_picture(f"{stage}/pr_curve", picture)
        print(f"per-class AP written to {paths['csv']} and {paths['markdown']}; precision/recall curves in "
              f"{paths['pr_curve']}")
        return paths

    # ---- pictures ----------------------------------------------------------------------------------------
    def log_examples(self, stage: str, batch: dict, outputs: Sequence[dict]) -> None:
        n = min(self.hparams.num_log_images, len(batch["image"]))
        images = to_uint8_images(batch["image"][:n], *self.normalisation())
        shown = [{k: d[k][d["scores"] >= self.hparams.display_thresh] for k in ("boxes", "scores", "labels")}
                 for d in outputs[:n]]
        self.log_picture(f"{stage}/detections", detection_grid(images, shown, self.class_names, batch["target"][:n]))

    # ---- predict -----------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"boxes"`` (xyxy, original pixels), ``"scores", "labels"}`` (labels 1..K)."""
        return [{k: v.detach().cpu() for k, v in d.items()}
                for d in self.to_original(self.detect(batch["image"], batch), batch)]

    def predict_image(self, image: np.ndarray, transform, proposals: np.ndarray | None = None
                      ) -> dict[str, torch.Tensor]:
        """Detect objects in one HxWx3 uint8 image with the data's evaluation pipeline (``datamodule.
        eval_transform``); boxes come back in the image's pixels. Proposal-based detectors use
        ``proposals`` (xyxy, image pixels) or run selective search on the image. For notebooks."""
        regions = np.zeros((0, 4), np.float32)
        if self.needs_proposals:
            from densecnn.data.detection import selective_search

            regions = selective_search(image) if proposals is None else np.asarray(proposals, np.float32).reshape(-1, 4)
        out = transform(image=image, bboxes=regions, labels=np.zeros(len(regions), np.int64),
                        iscrowd=np.zeros(len(regions), np.int64))
        tensor = out["image"].unsqueeze(0).to(self.device)
        scale = max(tensor.shape[-2:]) / max(image.shape[:2])
        content = [min(padded, round(side * scale)) for padded, side in zip(tensor.shape[-2:], image.shape[:2])]
        batch = {"image": tensor, "scale": torch.tensor([scale]), "image_size": torch.tensor([content]),
                 "proposals": [torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))]}
        was_training = self.training
        self.eval()
        with torch.no_grad():
            detections = self.to_original(self.detect(tensor, batch), batch)[0]
        self.train(was_training)
        return {k: v.cpu() for k, v in detections.items()}

    def prediction_records(self, prediction: list[dict], batch: dict, out_dir: Path, batch_idx: int) -> list[dict]:
        """COCO result entries, and a picture of each image with its detections in ``out_dir/images``.
        ``image_id`` is how the data names its images (the DataModule's ``image_key``): the COCO image id, or
        for Pascal VOC the image name ("000005"), as the VOC devkit's results files do."""
        folder = out_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        category_ids = self.category_ids
        by_name = getattr(getattr(self.trainer, "datamodule", None), "image_key", "id") == "name"
        for path, image_id, det in zip(batch["path"], batch["image_id"].tolist(), prediction):
            image_id = Path(path).stem if by_name else int(image_id)  # record_key: the name is the file's stem
            keep = det["scores"] >= self.hparams.display_thresh
            save_png(draw_detections(read_rgb(path), det["boxes"][keep], det["labels"][keep], det["scores"][keep],
                                     self.class_names), folder / f"{Path(path).stem}.png")
            for (x0, y0, x1, y1), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                      det["labels"].tolist()):
                records.append({"image_id": image_id, "category_id": int(category_ids[label - 1]),
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "score": round(float(score), 5)})
        return records

    def save_predictions(self, records: Sequence[dict], out_dir: Path) -> Path:
        """``detections.json``: a COCO results file (``pycocotools.coco.COCO.loadRes`` reads it)."""
        path = out_dir / "detections.json"
        ordered = sorted(records, key=lambda r: (r["image_id"], -r["score"]))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ordered))
        tmp.replace(path)
        return path
