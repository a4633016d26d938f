"""Video classification with 3D convolutions (Tran et al., C3D, arXiv:1412.0767; S3 L4147-4196).

* Backbones: C3D (``c3d``, ``width_mult`` for reduced models), torchvision's ``r3d_18``/``mc3_18``/
  ``r2plus1d_18``, inflated 2D ResNets (``inflated_resnet50`` with 2D ``weights``), or any 2D backbone,
  which is run on every frame with its outputs averaged over time (``FrameAveraged``: the "2D ConvNet"
  baseline that cannot see motion).
* Metrics: clip accuracy (each view on its own) and video accuracy (the softmax averaged over all the video's
  views: K uniformly spaced clips times 1 or 3 crops), top-1 and top-5. The clip and crop counts are part of the
  names, e.g. ``val/video_acc1_10clips_3crop``; they come from the DataModule's ``clips_per_video`` and
  ``crops_per_clip``.
* The paper's feature protocol (Section 3.3/4.1), ``feature_protocol: true``: the backbone (normally C3D with
  pretrained ``weights``) is frozen; each clip's fc6 activations are averaged over the video's clips and
  L2-normalised into a video descriptor, and only a linear classifier on top of it is trained, with the
  multi-class hinge loss of a linear SVM (``probe_loss: hinge``) or cross-entropy. The backbone runs once per
  fit: at the start of ``fit`` every training and validation video is embedded with the evaluation transform
  (``clips_per_video`` uniform clips x ``crops_per_clip`` crops, no random draw: the training descriptors are
  clip averages too), the per-view descriptors are kept in memory and, with ``feature_cache_dir``, on disk
  (keyed by the backbone's weights, ``feature_layer``, every video file and the clip/transform settings, so a
  changed checkpoint or data set is embedded again), and the probe then trains for all epochs on them without
  decoding a video. Under DDP each rank embeds every W-th video and the descriptors are all-gathered. The
  frozen backbone must load completely from ``weights`` (only the classifier, fc8, may be absent from the
  file). Test and predict embed their videos as usual. ``extract_features`` returns the descriptors for use
  elsewhere.
* Predict writes ``predictions.csv`` (one row per video: label, probability, the clips' scores for that
  label, all class probabilities) and ``clips/<video>.csv`` per video (one row per clip).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy

from densecnn.backbones import get_entry
from densecnn.backbones.inflate import FrameAveraged
from densecnn.data import DataError
from densecnn.errors import ConfigError, UserError
from densecnn.weights import WeightsError
from densecnn.viz import BAD, GOOD, image_grid, save_png, to_uint8_images

from .base import BaseTask, to_channels_last

PROBE_LOSSES = ("hinge", "cross_entropy")


class DescriptorDataset(Dataset):
    """The feature protocol's cached descriptors: item i is ``{"clip_features": (K, D), "label"}``, the
    ``feature_layer`` activations of video i's K views (clips x crops), before averaging and normalising."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"clip_features": self.features[index], "label": self.labels[index]}


class VideoClassificationTask(BaseTask):
    """Video classification (C3D, Tran et al. 2015): clip cross-entropy, clip accuracy and video accuracy over
    K clips x C crops (Section 3), any 3D backbone or a 2D one per frame, and the paper's feature protocol
    (frozen network, fc6 features, linear SVM; Sections 3.3 and 4.1).
    """
    monitor_mode = "max"
    identity_hparams = (*BaseTask.identity_hparams, "clip_len", "crop_size", "feature_protocol")
    input_keys = ("video",)

    def __init__(
        self,
        backbone: str = "c3d",
        num_classes: int = 101,
        clip_len: int = 16,
        crop_size: int = 112,
        weights: str | None = None,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        feature_protocol: bool = False,
        feature_layer: Literal["fc6", "fc7"] = "fc6",
        probe_loss: Literal["hinge", "cross_entropy"] = "hinge",
        feature_cache_dir: str | None = None,
        channels_last: bool = True,
        **kwargs,
    ):
        """
        Args:
            backbone: a 3D backbone (``c3d``, ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``inflated_resnet18``, ...)
                or a 2D one, applied per frame and averaged over time.
            num_classes: number of action classes (101 for UCF101, 487 for Sports-1M).
            clip_len, crop_size: the clips the model is built for (C3D sizes fc6 from them); they must match
                the DataModule's.
            class_names: label names (taken from the data when training).
            feature_protocol: freeze the backbone and train a linear classifier on clip-averaged, L2-normalised
                ``feature_layer`` descriptors (Tran et al.'s protocol), with ``probe_loss``. The training and
                validation videos are embedded once per fit; every backbone weight must come from ``weights``.
            feature_cache_dir: with ``feature_protocol``, also keep the descriptors there (one ``.pt`` file per
                split, written atomically), so the next fit with the same backbone weights and data embeds nothing.
            channels_last: ``BaseTask``'s option, on by default here: 3D weights and clips in
                ``channels_last_3d`` memory layout (2D weights of a frame-averaged backbone in ``channels_last``);
                PyTorch's CPU Conv3d backward is several times faster in it (``benchmarks/video.py``), and GPUs
                prefer it too.
        """
        self._check_choice("probe_loss", probe_loss, PROBE_LOSSES)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.init_args.class_names has {len(class_names)} names for num_classes={num_classes}")
        if clip_len < 1 or crop_size < 1:
            raise ValueError("model.init_args.clip_len and crop_size must be positive")
        if feature_protocol and not kwargs.get("strict_weights", True):
            raise ConfigError("model.init_args.strict_weights: false cannot be used with feature_protocol: true: the "
                              "backbone is frozen, and weights missing from the file would stay random; the whole "
                              "backbone must load from model.init_args.weights (only its classifier may be absent)")
        self._descriptor_memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Views averaged into a video prediction; they name the video metrics and are taken from the
        # DataModule (its clips_per_video and crops_per_clip) when the task runs in a Trainer.
        self.clips_per_video, self.crops_per_clip = 10, 1
        super().__init__(backbone=backbone, weights=weights, channels_last=channels_last, **kwargs)

    # ---- model -------------------------------------------------------------------------------------------
    @property
    def is_3d(self) -> bool:
        """A video backbone (its registered input is C x T x H x W) rather than a 2D one run per frame."""
        return len(get_entry(self.hparams.backbone).input_size) == 4

    def configure_models(self) -> None:
        h = self.hparams
        overrides: dict = {"num_classes": 0 if h.feature_protocol else h.num_classes}
        if h.backbone == "c3d" and "input_size" not in (h.backbone_kwargs or {}):
            overrides["input_size"] = (3, h.clip_len, h.crop_size, h.crop_size)
        if self.is_3d:
            self.backbone = self._build_backbone(**overrides)
        else:
            self.backbone = FrameAveraged(self._build_backbone(**overrides))
        if h.feature_protocol:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()
            self.probe = nn.Linear(self._descriptor_width(), h.num_classes)

    def compile_targets(self) -> list[tuple[nn.Module, str]]:
        """The backbone's ``forward_features``; for a 2D backbone run per frame, the 2D model's (``FrameAveraged``
        folds time into the batch around it)."""
        if isinstance(self.backbone, FrameAveraged):
            return [(self.backbone.model, "forward_features")]
        return super().compile_targets()

    def _build_backbone(self, **overrides) -> nn.Module:
        """``build_backbone``; for the feature protocol a file that does not fill the whole (frozen) backbone is
        an error naming ``model.init_args.weights``, and no weights at all a warning (random features)."""
        h = self.hparams
        if not h.feature_protocol:
            return self.build_backbone(**overrides)
        if h.weights is None:
            warnings.warn("feature_protocol: true without model.init_args.weights: the frozen backbone keeps its random "
                          "initialisation (a baseline, not the paper's pretrained features)", stacklevel=3)
        try:
            return self.build_backbone(**overrides)
        except WeightsError as err:
            raise UserError(f"model.init_args.weights: {err}. The feature protocol freezes the backbone, so every "
                            f"backbone weight must come from this file (only the classifier, e.g. C3D's fc8, may be "
                            f"absent)") from err

    def _descriptor_width(self) -> int:
        layer = getattr(self.backbone, self.hparams.feature_layer, None)
        if hasattr(self.backbone, "embed") and isinstance(layer, nn.Linear):
            return layer.out_features
        return self.backbone.num_features

    def configure_losses(self) -> None:
        h = self.hparams
        if h.feature_protocol and h.probe_loss == "hinge":
            self.criterion: nn.Module = nn.MultiMarginLoss()  # the multi-class linear SVM's loss
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=h.label_smoothing)

    def head_modules(self) -> list[nn.Module]:
        return [self.probe] if self.hparams.feature_protocol else super().head_modules()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.feature_protocol:
            self.backbone.eval()  # frozen feature extractor: no dropout, fixed BN statistics
        return self

    # ---- metrics -----------------------------------------------------------------------------------------
    def video_metric_suffix(self) -> str:
        return f"_{self.clips_per_video}clips_{self.crops_per_clip}crop"

    def _accuracies(self, prefix: str, suffix: str = "") -> dict:
        n = self.hparams.num_classes
        metrics = {f"{prefix}_acc1{suffix}": MulticlassAccuracy(n, top_k=1, average="micro")}
        if n > 5:
            metrics[f"{prefix}_acc5{suffix}"] = MulticlassAccuracy(n, top_k=5, average="micro")
        return metrics

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({**self._accuracies("clip"), **self._accuracies("video", self.video_metric_suffix())},
                                compute_groups=False)

    def configure_metrics(self) -> None:
        super().configure_metrics()
        # training sees one random clip per video: clip accuracy only
        self.metrics["train_metrics"] = MetricCollection(self._accuracies("clip"), prefix="train/",
                                                         compute_groups=False)
        self.monitor = f"val/video_acc1{self.video_metric_suffix()}"

    def _sync_with_data(self) -> None:
        """Take clip/crop counts and class names from the DataModule (the metric names depend on them)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        h = self.hparams
        counts = (getattr(datamodule, "clips_per_video", self.clips_per_video),
                  getattr(datamodule, "crops_per_clip", self.crops_per_clip))
        if counts != (self.clips_per_video, self.crops_per_clip):
            self.clips_per_video, self.crops_per_clip = counts
            self.configure_metrics()
        for key in ("clip_len", "crop_size"):
            value = getattr(datamodule, key, h[key])
            if value != h[key]:
                raise DataError(f"model.init_args.{key} is {h[key]} but data.init_args.{key} is {value}: the model "
                                f"is built for the clips the data makes; set both to the same value")

    def configure_callbacks(self):
        self._sync_with_data()  # before BaseTask creates the checkpoint callback that monitors self.monitor
        return super().configure_callbacks()

    def setup(self, stage: str) -> None:
        self._sync_with_data()
        self.sync_class_names()

    # ---- the feature protocol: embed once, then train the probe on descriptors ----------------------------
    # In on_fit_start: after the DataModule's setup and the strategy's (the model is on its device, the process
    # group exists), and before Lightning asks for the first dataloader (sanity check, then training).
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.hparams.feature_protocol:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not callable(getattr(datamodule, "use_descriptors", None)):
            raise UserError("model.init_args.feature_protocol: true needs a DataModule that serves cached descriptors "
                            "(VideoFolderDataModule)")
        self._frozen_weights_digest = None  # once per fit: the weights may have been loaded since the last one
        datamodule.use_descriptors({split: DescriptorDataset(*self.descriptors(datamodule, split))
                                    for split in ("train", "val")})

    def descriptors(self, datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, K, D), labels (N,)) of the ``split``'s videos: from memory, the disk cache, or embedded."""
        dataset = datamodule.descriptor_source(split)
        key = self._descriptor_key(datamodule.descriptor_identity(dataset))
        if key in self._descriptor_memory:
            return self._descriptor_memory[key]
        cache = Path(self.hparams.feature_cache_dir) / f"{split}_{key[:24]}.pt" if self.hparams.feature_cache_dir \
            else None
        if self.trainer.strategy.broadcast(cache is not None and cache.is_file(), src=0):  # one decision for all ranks
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            result = saved["features"], saved["labels"]
        else:
            result = self._embed(datamodule, dataset)
            if cache is not None and self.trainer.is_global_zero:
                cache.parent.mkdir(parents=True, exist_ok=True)
                partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                torch.save({"features": result[0], "labels": result[1]}, partial)
                os.replace(partial, cache)  # atomic: a reader sees the old file or the whole new one
        self._descriptor_memory[key] = result
        return result

    def _descriptor_key(self, identity: dict) -> str:
        """SHA256 of the backbone's tensors, ``feature_layer`` and the data's identity (files, clip settings)."""
        digest = hashlib.sha256(self._weights_digest().encode())
        digest.update(json.dumps({"backbone": self.hparams.backbone, "layer": self.hparams.feature_layer,
                                  "data": identity}, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def _weights_digest(self) -> str:
        """SHA256 of the frozen backbone's tensors, computed once per fit (both splits' keys use it; C3D's weights
        are ~300 MB)."""
        if getattr(self, "_frozen_weights_digest", None) is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.backbone.state_dict().items()):
                digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._frozen_weights_digest = digest.hexdigest()
        return self._frozen_weights_digest

    def _embed(self, datamodule, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the frozen backbone over ``dataset`` once: each rank takes every W-th video (the evaluation
        sampler), and the per-view descriptors are all-gathered so every rank holds all of them."""
        loader = datamodule.eval_loader(dataset)
        indices = list(iter(loader.sampler))
        features, labels = [], []
        with self.trainer.precision_plugin.forward_context():
            for batch in loader:
                videos = batch["video"] if batch["video"].dim() == 6 else batch["video"].unsqueeze(1)
                videos = videos.to(self.device)
                clips = self.clip_descriptors(videos.flatten(0, 1))
                features.append(clips.view(videos.shape[0], videos.shape[1], -1).float().cpu())
                labels.append(batch["label"].cpu())
        local = (indices, torch.cat(features), torch.cat(labels))
        parts = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, local)
        out_features = torch.empty(len(dataset), *local[1].shape[1:])
        out_labels = torch.empty(len(dataset), dtype=local[2].dtype)
        for part_indices, part_features, part_labels in parts:
            out_features[part_indices], out_labels[part_indices] = part_features, part_labels
        return out_features, out_labels

    # ---- forward passes ----------------------------------------------------------------------------------
    def clip_descriptors(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, D) feature-protocol descriptors of single clips (``feature_layer``)."""
        if self.hparams.channels_last:
            clips = to_channels_last(clips)
        with torch.no_grad():
            if hasattr(self.backbone, "embed"):
                return self.backbone.embed(clips, self.hparams.feature_layer)
            return self.backbone(clips)

    def extract_features(self, videos: torch.Tensor) -> torch.Tensor:
        """Video descriptors as in Tran et al.: the clips' features averaged, then L2-normalised.
        ``videos`` is (B, K, C, T, H, W) (K clips per video) or (B, C, T, H, W) (one clip)."""
        clips = videos.flatten(0, 1) if videos.dim() == 6 else videos
        features = self.clip_descriptors(clips)
        if videos.dim() == 6:
            features = features.view(videos.shape[0], videos.shape[1], -1).mean(dim=1)
        return F.normalize(features, dim=1)

    def clip_logits(self, videos: torch.Tensor) -> torch.Tensor:
        """Logits per clip: (B, C, T, H, W) -> (B, classes); (B, K, C, T, H, W) -> (B, K, classes)."""
        if videos.dim() == 6:
            return self.clip_logits(videos.flatten(0, 1)).view(videos.shape[0], videos.shape[1], -1)
        if videos.dim() != 5:
            raise ValueError(f"expected clips (B, C, T, H, W) or (B, K, C, T, H, W), got {tuple(videos.shape)}")
        if self.hparams.channels_last:
            videos = to_channels_last(videos)  # (B, K, ...) views arrive here flattened to 5-D
        if self.hparams.feature_protocol:
            return self.probe(F.normalize(self.clip_descriptors(videos), dim=1))
        return self.backbone(videos)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.clip_logits(videos)

    def video_probs(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video probabilities (B, classes), clip probabilities (B, K, classes)) for (B, K, ...) input."""
        if self.hparams.feature_protocol:
            video = self.probe(self.extract_features(videos)).softmax(dim=1)
            return video, self.clip_logits(videos).softmax(dim=-1)
        clip_probs = self.clip_logits(videos).softmax(dim=-1)
        return clip_probs.mean(dim=1), clip_probs

    def probe_outputs(self, clip_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(video logits (B, classes), clip logits (B, K, classes)) of cached per-view descriptors (B, K, D): the
        video descriptor is the views' mean, L2-normalised (``extract_features``), each clip's its own."""
        video_logits = self.probe(F.normalize(clip_features.mean(dim=1), dim=1))
        return video_logits, self.probe(F.normalize(clip_features, dim=2))

    def compute_loss(self, batch: dict, stage: str) -> tuple[torch.Tensor, dict]:
        if "clip_features" in batch:  # the feature protocol's cached descriptors
            video_logits, clip_logits = self.probe_outputs(batch["clip_features"])
            return (self.criterion(video_logits, batch["label"]),
                    {"clip_logits": clip_logits, "video_probs": video_logits.softmax(dim=1)})
        videos, labels = batch["video"], batch["label"]
        if videos.dim() == 5:  # one clip per video (training)
            logits = self.clip_logits(videos)
            return self.criterion(logits, labels), {"clip_logits": logits}
        clip_logits = self.clip_logits(videos)  # (B, K, classes)
        k = clip_logits.shape[1]
        if self.hparams.feature_protocol:
            video_logits = self.probe(self.extract_features(videos))
            loss = self.criterion(video_logits, labels)
            video_probs = video_logits.softmax(dim=1)
        else:
            loss = self.criterion(clip_logits.flatten(0, 1), labels.repeat_interleave(k))
            video_probs = clip_logits.softmax(dim=-1).mean(dim=1)
        return loss, {"clip_logits": clip_logits, "video_probs": video_probs}

    def update_metrics(self, stage: str, outputs: dict, batch: dict) -> None:
        labels = batch["label"]
        clip_logits = outputs["clip_logits"]
        clip_labels = labels if clip_logits.dim() == 2 else labels.repeat_interleave(clip_logits.shape[1])
        for name, metric in self.metrics_for(stage).items(keep_base=True):
            if name.startswith("clip_"):
                metric.update(clip_logits.reshape(len(clip_labels), -1), clip_labels)
            elif "video_probs" in outputs:
                metric.update(outputs["video_probs"], labels)

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["label"])

    # ---- pictures ----------------------------------------------------------------------------------------
    def clip_strip(self, videos: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor | None,
                   frames_per_row: int = 8) -> np.ndarray:
        """One row per video: frames of its middle clip, captioned with the prediction (green when right)."""
        clips = videos[:, videos.shape[1] // 2] if videos.dim() == 6 else videos
        n = min(len(clips), max(1, self.hparams.num_log_images // frames_per_row) * 2)
        t = clips.shape[2]
        picks = torch.linspace(0, t - 1, min(frames_per_row, t)).round().long()
        tiles, captions, colours = [], [], []
        names = self.class_names
        for i in range(n):
            frames = clips[i][:, picks].transpose(0, 1)  # (frames, C, H, W)
            tiles += to_uint8_images(frames.cpu(), *self.normalisation())
            p = int(probs[i].argmax())
            right = labels is None or int(labels[i]) < 0 or int(labels[i]) == p
            captions += [f"{names[p]} {float(probs[i, p]):.2f}"] + [f"t={int(j)}" for j in picks[1:]]
            colours += [GOOD if right else BAD] * len(picks)
        return image_grid(tiles, captions, colours, columns=len(picks))

    def log_examples(self, stage: str, batch: dict, outputs: dict) -> None:
        if "video_probs" in outputs and "video" in batch:  # cached descriptors have no frames to show
            self.log_picture(f"{stage}/examples", self.clip_strip(batch["video"], outputs["video_probs"].float(),
                                                                  batch["label"]))

    # ---- export ------------------------------------------------------------------------------------------
    def export_spec(self, *, dynamic_batch: bool = True):
        """The clip classifier with its softmax on a fixed clip: ``video`` (N, 3, clip_len, crop_size, crop_size)
        normalised RGB -> ``probs`` (N, num_classes). C3D, the torchvision video ResNets and 2D backbones run per
        frame (``FrameAveraged``) alike; averaging several clips into a video prediction is left to the caller
        (``preprocess.json``'s ``sampling``)."""
        from densecnn.export import ExportSpec
        from densecnn.export.modules import Probabilities

        from .export import attached_datamodule, eval_steps, example_images, image_preprocess

        h = self.hparams
        datamodule = attached_datamodule(self)
        size = (h.crop_size, h.crop_size)
        data = getattr(datamodule, "hparams", {}) if datamodule is not None else {}
        resize = data.get("resize")
        steps = ([{"op": "resize_shorter_side" if isinstance(resize, int) else "resize",
                   "size": resize if isinstance(resize, int) else list(resize), "interpolation": "bilinear"}]
                 if resize is not None else []) + (eval_steps(datamodule) or [])
        preprocess = {**image_preprocess(self, size, steps if datamodule is not None else None),
                      "layout": "NCTHW", "clip_len": h.clip_len, "frame_stride": data.get("frame_stride", 1),
                      "frame_size": None if resize is None else resize, "crop_size": h.crop_size,
                      "sampling": {"clip": f"{h.clip_len} frames, every {data.get('frame_stride', 1)}-th decoded frame",
                                   "clips_per_video": data.get("clips_per_video", self.clips_per_video),
                                   "crops_per_clip": data.get("crops_per_clip", self.crops_per_clip),
                                   "video_prediction": "mean of the clips' probabilities over uniformly spaced clips"},
                      "class_names": self.class_names,
                      "outputs": {"probs": "softmax probabilities (N, num_classes) of each clip, in class_names order"}}
        return ExportSpec(Probabilities(self, dim=1).eval(), (example_images(3, h.clip_len, *size),), ["video"],
                          ["probs"], dynamic_batch=dynamic_batch, preprocess=preprocess,
                          inputs_from_batch=lambda batch: (batch["video"].flatten(0, 1) if batch["video"].dim() == 6
                                                           else batch["video"],))

    # ---- predict -----------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        videos = batch["video"] if batch["video"].dim() == 6 else batch["video"].unsqueeze(1)
        probs, clip_probs = self.video_probs(videos)
        return {"probs": probs, "labels": probs.argmax(dim=1), "clip_probs": clip_probs}

    def prediction_records(self, prediction: dict, batch: dict, out_dir: Path, batch_idx: int) -> list[dict]:
        names = self.class_names
        probs = prediction["probs"].float().cpu()
        clip_probs = prediction["clip_probs"].float().cpu()
        if batch_idx == 0 and self.trainer.is_global_zero:
            save_png(self.clip_strip(batch["video"], probs, None), out_dir / "preview.png")
        clip_dir = out_dir / "clips"
        clip_dir.mkdir(parents=True, exist_ok=True)
        records = []
        for i, (path, label) in enumerate(zip(batch["path"], prediction["labels"].tolist())):
            clip_file = clip_dir / f"{Path(path).parent.name}__{Path(path).stem}.csv"
            with open(clip_file, "w", newline="") as f:  # one row per clip of this video
                writer = csv.writer(f)
                writer.writerow(["clip", "start_frame", "label", "probability", *[f"p_{n}" for n in names]])
                for k, (start, p) in enumerate(zip(batch["starts"][i].tolist(), clip_probs[i])):
                    top = int(p.argmax())
                    writer.writerow([k, start, names[top], f"{float(p[top]):.6f}", *[f"{float(v):.6f}" for v in p]])
            records.append({"file": path, "label": names[label], "probability": float(probs[i, label]),
                            "clip_scores": [round(float(v), 6) for v in clip_probs[i, :, label]],
                            "probs": [round(float(v), 6) for v in probs[i]], "clips_csv": str(clip_file.relative_to(out_dir))})
        return records

    def save_predictions(self, records: Sequence[dict], out_dir: Path) -> Path:
        path = out_dir / "predictions.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "probability", "clip_scores", *[f"p_{n}" for n in self.class_names]])
            for r in sorted(records, key=lambda r: r["file"]):
                writer.writerow([r["file"], r["label"], f"{r['probability']:.6f}",
                                 " ".join(f"{v:.6f}" for v in r["clip_scores"]), *r["probs"]])
        return path
