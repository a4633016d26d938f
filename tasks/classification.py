"""Image classification: top-1/top-5, per-class accuracy and a confusion matrix at test, the papers'
test-time augmentation (AlexNet's 10 crops, VGG/ResNet multi-scale averaging), and CSV predictions."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import v2
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from densecnn.viz import BAD, GOOD, confusion_matrix_image, image_grid, save_png, to_uint8_images

from .base import BaseTask

TTA = ("none", "ten_crop", "multi_scale")


def logits_and_aux(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits and the auxiliary classifiers' logits. ``forward`` returns only the logits for every backbone;
    one with auxiliary classifiers (GoogLeNet) says so with ``forward_with_aux(x) -> (logits, [aux, ...])``,
    which gives them in training mode (an empty list in eval mode)."""
    forward_with_aux = getattr(model, "forward_with_aux", None)
    if callable(forward_with_aux):
        logits, aux = forward_with_aux(images)
        return logits, list(aux)
    return model(images), []


class ClassificationTask(BaseTask):
    """Image classification on any registered backbone: cross-entropy (label smoothing, mixup/CutMix), top-1 and
    top-5 accuracy, per-class accuracy and a confusion matrix at test, the papers' test-time augmentation
    (AlexNet's ten crops, Krizhevsky et al. 2012 Section 4.1; VGG/ResNet multi-scale) and GoogLeNet's auxiliary
    losses (Szegedy et al. 2014 Section 5).
    """
    monitor = "val/acc1"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 1000,
        weights: str | None = None,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        aux_loss_weight: float = 0.3,
        tta: Literal["none", "ten_crop", "multi_scale"] = "none",
        tta_crop_size: int | None = None,
        tta_scales: list[int] | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        **kwargs: Any,
    ):
        """
        Args:
            backbone, weights: see ``BaseTask``.
            num_classes: number of classes; must agree with the data's class folders.
            class_names: filled from the data at fit time and stored in the checkpoint.
            label_smoothing: cross-entropy label smoothing.
            aux_loss_weight: weight of each auxiliary classifier's loss in training, for backbones that have
                them (GoogLeNet's two, Szegedy et al. 2014 Section 5: 0.3); the loss is
                CE(logits) + aux_loss_weight * (CE(aux1) + CE(aux2)).
            tta: test/predict-time augmentation: ``ten_crop`` averages the softmax over the four corner and
                centre crops of ``tta_crop_size`` and their mirror images (AlexNet, S1 L126-161);
                ``multi_scale`` averages it over the image resized to each shorter side in ``tta_scales``
                (VGG/ResNet, S3 L1152-1215). Validation always uses the single view.
            mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters of mixup and CutMix on each training batch
                (torchvision's ``v2.MixUp`` / ``v2.CutMix``); 0 turns one off. With both on, each batch gets
                CutMix with probability ``mixup_switch_prob``, else mixup (timm's ``--mixup-switch-prob``).
            mixup_prob: probability that a batch is mixed at all (timm's ``--mixup-prob``).
                The loss is cross-entropy against the mixed soft targets (``label_smoothing`` applies on top);
                ``train/acc1`` still compares predictions with each image's own, unmixed label.
        """
        self._check_choice("tta", tta, TTA)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.init_args.class_names has {len(class_names)} names for num_classes={num_classes}")
        if tta == "multi_scale" and not tta_scales:
            raise ValueError("model.init_args.tta_scales is needed for tta: multi_scale (e.g. [224, 256, 288])")
        for key, value, high in (("mixup_alpha", mixup_alpha, math.inf), ("cutmix_alpha", cutmix_alpha, math.inf),
                                 ("mixup_prob", mixup_prob, 1), ("mixup_switch_prob", mixup_switch_prob, 1)):
            if not 0 <= value <= high:
                raise ValueError(f"model.init_args.{key} must be in [0, {high}], got {value}")
        super().__init__(backbone=backbone, weights=weights, **kwargs)
        self.batch_mix = self._make_batch_mix()

    def configure_models(self) -> None:
        self.backbone = self.build_backbone(num_classes=self.hparams.num_classes)

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def _make_batch_mix(self) -> v2.Transform | None:
        h = self.hparams
        ops = [op(alpha=alpha, num_classes=h.num_classes)
               for op, alpha in ((v2.MixUp, h.mixup_alpha), (v2.CutMix, h.cutmix_alpha)) if alpha > 0]
        if not ops or h.mixup_prob <= 0:
            return None
        mix = ops[0] if len(ops) == 1 else v2.RandomChoice(ops, p=[1 - h.mixup_switch_prob, h.mixup_switch_prob])
        return mix if h.mixup_prob >= 1 else v2.RandomApply([mix], p=h.mixup_prob)

    def mix_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/CutMix of a training batch: the mixed images and their targets (class probabilities, or the
        labels themselves for a batch left unmixed). Called in the training step, not in the DataLoader, so its
        draws come from torch's global generator in the main process: the run's seed fixes them whatever
        ``num_workers`` is, and checkpoints restore them."""
        if self.batch_mix is None:
            return images, labels
        return self.batch_mix(images, labels)

    def make_metrics(self) -> MetricCollection:
        n = self.hparams.num_classes
        metrics = {"acc1": MulticlassAccuracy(n, top_k=1, average="micro")}
        if n > 5:
            metrics["acc5"] = MulticlassAccuracy(n, top_k=5, average="micro")
        return MetricCollection(metrics)

    def configure_metrics(self) -> None:
        super().configure_metrics()
        n = self.hparams.num_classes
        self.test_per_class = MulticlassAccuracy(n, average=None)
        self.test_confusion = MulticlassConfusionMatrix(n)

    def setup(self, stage: str) -> None:
        self.sync_class_names()

    # ---- forward passes ----------------------------------------------------------------------------------
    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities with the configured test-time augmentation."""
        h = self.hparams
        if h.tta == "ten_crop":
            size = h.tta_crop_size or int(min(images.shape[-2:]) * 224 / 256)
            crops = torch.cat(TF.ten_crop(images, [size, size]))  # (10 N, C, size, size), one forward pass
            probs = self.backbone(crops).softmax(dim=1)
            return probs.view(10, len(images), -1).mean(dim=0)
        if h.tta == "multi_scale":
            height, width = images.shape[-2:]
            total = 0
            for scale in h.tta_scales:
                factor = scale / min(height, width)
                resized = F.interpolate(images, size=(round(height * factor), round(width * factor)),
                                        mode="bilinear", align_corners=False, antialias=True)
                total = total + self.backbone(resized).softmax(dim=1)
            return total / len(h.tta_scales)
        return self.backbone(images).softmax(dim=1)

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        if stage == "test" and self.hparams.tta != "none":
            probs = self.predict_probs(images)
            return F.nll_loss(probs.clamp_min(1e-12).log(), labels), probs
        targets = labels
        if stage == "train":
            images, targets = self.mix_batch(images, labels)
        logits, aux = logits_and_aux(self.backbone, images) if stage == "train" else (self.backbone(images), [])
        loss = self.criterion(logits, targets)
        if aux and stage == "train":
            loss = loss + self.hparams.aux_loss_weight * sum(self.criterion(a, targets) for a in aux)
        return loss, logits

    def update_metrics(self, stage: str, outputs: torch.Tensor, batch: dict) -> None:
        self.metrics_for(stage).update(outputs, batch["label"])
        if stage == "test":
            self.test_per_class.update(outputs, batch["label"])
            self.test_confusion.update(outputs, batch["label"])

    def on_test_epoch_end(self) -> None:
        per_class = self.test_per_class.compute()
        confusion = self.test_confusion.compute().cpu().numpy()
        self.test_per_class.reset()
        self.test_confusion.reset()
        for name, value in zip(self.class_names, per_class):
            self.log(f"test/acc_class/{name}", value)
        if self.trainer.is_global_zero:
            self.log_picture("test/confusion_matrix", confusion_matrix_image(confusion, self.class_names))
            with open(self.run_dir / "confusion_matrix.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["true \\ predicted", *self.class_names])
                for name, row in zip(self.class_names, confusion):
                    writer.writerow([name, *map(int, row)])

    def log_examples(self, stage: str, batch: dict, outputs: torch.Tensor) -> None:
        n = self.hparams.num_log_images
        probs = outputs[:n].float()
        probs = probs if stage == "test" and self.hparams.tta != "none" else probs.softmax(dim=1)
        images = batch["image"][:n]
        if images.shape[-1] != images.shape[-2] or self.hparams.tta == "ten_crop":
            images = TF.center_crop(images, [min(images.shape[-2:])] * 2)
        confidence, predicted = probs.max(dim=1)
        labels = batch["label"][:n]
        names = self.class_names
        captions = [f"{names[p]} {c:.2f}" for p, c in zip(predicted.tolist(), confidence.tolist())]
        colours = [GOOD if p == t else BAD for p, t in zip(predicted.tolist(), labels.tolist())]
        stats = self.normalisation()
        self.log_picture(f"{stage}/examples", image_grid(to_uint8_images(images, *stats), captions, colours))

    # ---- export ------------------------------------------------------------------------------------------
    def export_spec(self, *, dynamic_batch: bool = True):
        """The backbone with its softmax on one view of the evaluation size (``image_size`` of the DataModule, else
        the backbone's paper size): ``image`` (N, 3, H, W) normalised RGB -> ``probs`` (N, num_classes). Test-time
        augmentation (``tta``) is not in the graph: it gives the single-view probabilities."""
        from densecnn.export import ExportSpec
        from densecnn.export.modules import Probabilities

        from .export import attached_datamodule, backbone_input_size, eval_steps, example_images, image_preprocess

        datamodule = attached_datamodule(self)
        size = getattr(datamodule, "image_size", None)
        size = (size, size) if isinstance(size, int) else tuple(size) if size else backbone_input_size(self)
        preprocess = {**image_preprocess(self, size, eval_steps(datamodule)), "class_names": self.class_names,
                      "outputs": {"probs": "softmax probabilities (N, num_classes) in class_names order"}}
        notes = f"test-time augmentation ({self.hparams.tta}) is not exported" if self.hparams.tta != "none" else ""
        in_chans = (self.hparams.backbone_kwargs or {}).get("in_chans", 3)
        return ExportSpec(Probabilities(self.backbone, dim=1).eval(), (example_images(in_chans, *size),), ["image"],
                          ["probs"], dynamic_batch=dynamic_batch, preprocess=preprocess, notes=notes,
                          inputs_from_batch=lambda batch: (batch["image"],))

    # ---- predict -----------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        probs = self.predict_probs(batch["image"])
        return {"probs": probs, "labels": probs.argmax(dim=1)}

    def predict_image(self, image: np.ndarray | torch.Tensor, transform=None) -> dict[str, Any]:
        """Classify one HxWx3 uint8 image (numpy) or a normalised CHW tensor; for notebooks."""
        if isinstance(image, np.ndarray):
            if transform is None:
                raise ValueError("predict_image needs the eval transform for a raw image, e.g. "
                                 "datamodule.eval_transform")
            image = transform(image=image)["image"]
        was_training = self.training
        self.eval()
        with torch.no_grad():
            probs = self.predict_probs(image.unsqueeze(0).to(self.device))[0]
        self.train(was_training)
        label = int(probs.argmax())
        return {"probs": probs.cpu(), "labels": label, "label_name": self.class_names[label]}

    def prediction_records(self, prediction: dict, batch: dict, out_dir: Path, batch_idx: int) -> list[dict]:
        names = self.class_names
        probs = prediction["probs"].float().cpu()
        if batch_idx == 0 and self.trainer.is_global_zero:
            n = self.hparams.num_log_images
            images = batch["image"][:n]
            if self.hparams.tta == "ten_crop":
                images = TF.center_crop(images, [min(images.shape[-2:])] * 2)
            captions = [f"{names[int(l)]} {float(p.max()):.2f}" for l, p in zip(prediction["labels"][:n], probs[:n])]
            save_png(image_grid(to_uint8_images(images.cpu(), *self.normalisation()), captions),
                     out_dir / "preview.png")
        return [{"file": path, "label": names[int(label)], "probability": float(p[int(label)]),
                 "probs": [round(float(v), 6) for v in p]}
                for path, label, p in zip(batch["path"], prediction["labels"], probs)]

    def save_predictions(self, records: Sequence[dict], out_dir: Path) -> Path:
        path = out_dir / "predictions.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "probability", *[f"p_{n}" for n in self.class_names]])
            for r in sorted(records, key=lambda r: r["file"]):
                writer.writerow([r["file"], r["label"], f"{r['probability']:.6f}", *r["probs"]])
        return path
