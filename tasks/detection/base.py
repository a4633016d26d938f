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
    monitor = "val/map_50"
    monitor_mode = "max"
    #: R-CNN and Fast R-CNN classify region proposals that come with the batch
    needs_proposals: bool = False

    def __init__(self, backbone: str = "resnet18", num_classes: int = 20, weights: str | None = None,
                 class_names: list[str] | None = None, category_ids: list[int] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 frozen_bn: bool = False, trainable_stages: int | None = None, **kwargs: Any):
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
        self.metrics = nn.ModuleDict({f"{stage}_metrics": DetectionMetrics(prefix=f"{stage}/")
                                      for stage in ("val", "test")})

    def make_metrics(self) -> DetectionMetrics:
        return DetectionMetrics()

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["image"])

    def _shared_step(self, batch: dict, batch_idx: int, stage: str) -> torch.Tensor | None:
        batch_size = self.batch_size_of(batch)
        if stage == "train":
            losses = self.training_losses(batch)
            loss = sum(losses.values())
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
            self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                          batch_size=batch_size)
            return loss
        detections = self.detect(batch["image"], batch)
        self.update_metrics(stage, detections, batch)
        if batch_idx == 0 and not self.trainer.sanity_checking and not self.tuning():
            self.log_examples(stage, batch, detections)
        return None

    def log_metrics_without_batches(self, stage: str) -> None:
        """Nothing to add: evaluation logs only at epoch end, which every rank runs (``_log_epoch_metrics``)."""

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
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

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = self.metrics_for(stage)
        if self.trainer.sanity_checking:
            metrics.reset()
            return
        # every rank computes (a collective under DDP), even one that saw no image
        values = DetectionMetrics.scalars(metrics.compute())  # synced across DDP ranks by torchmetrics
        metrics.reset()
        self.log_dict(values, prog_bar=stage == "val", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ---- pictures ----------------------------------------------------------------------------------------
    def _normalisation(self):
        from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        datamodule = getattr(self.trainer, "datamodule", None)
        return getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD)

    def log_examples(self, stage: str, batch: dict, outputs: Sequence[dict]) -> None:
        n = min(self.hparams.num_log_images, len(batch["image"]))
        images = to_uint8_images(batch["image"][:n], *self._normalisation())
        shown = [{k: d[k][d["scores"] >= 0.3] for k in ("boxes", "scores", "labels")} for d in outputs[:n]]
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
        """COCO result entries, and a picture of each image with its detections in ``out_dir/images``."""
        folder = out_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        category_ids = self.category_ids
        for path, image_id, det in zip(batch["path"], batch["image_id"].tolist(), prediction):
            keep = det["scores"] >= 0.3
            save_png(draw_detections(read_rgb(path), det["boxes"][keep], det["labels"][keep], det["scores"][keep],
                                     self.class_names), folder / f"{Path(path).stem}.png")
            for (x0, y0, x1, y1), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                      det["labels"].tolist()):
                records.append({"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
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
