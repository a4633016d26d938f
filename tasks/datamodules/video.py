"""Video folders (``root/<class>/<video>.{mp4,avi}`` or frame folders ``<video>/img_00001.jpg``; UCF101 lists,
Kinetics CSVs or MMAction2 lists when present or asked for, ``list_format``) as clips.

Training batches: ``{"video": (B, C, T, H, W), "label": (B,), ...}``, one random clip per video.
Evaluation and predict batches: ``{"video": (B, K, C, T, H, W), ...}``, each video's ``clips_per_video``
uniformly spaced clips (times ``crops_per_clip`` views: K = clips x crops), so the task can score views and
average them per video (see ``densecnn.data.video``
for decoding, sampling, caching and the short-video policy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from densecnn.data import DataError, build_pipeline
from densecnn.data.streaming import StreamingFrameStore
from densecnn.data.synthetic.common import has_files
from densecnn.data.synthetic.video import write_video_dataset
from densecnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from densecnn.data.video import VIDEO_SUFFIXES, FrameStore, VideoClipDataset, find_video_classes, video_splits
from densecnn.data.video_lists import LIST_FORMATS, SAMPLE_KINDS, is_frame_dir, samples_in
from densecnn.errors import ConfigError

from .base import BaseDataModule

# Presets; frames arrive already resized to ``resize`` (128x171 for C3D).
#   c3d: random crop_size x crop_size crops and horizontal flips for training, the centre crop for
#        evaluation (Tran et al. Section 3.2 / 4);
#   c3d_noflip: the same without flips, for data where mirroring changes the class (the synthetic
#        left/right and clockwise/anticlockwise motions);
#   center: the centre crop for training too; none: no crop (frames already at the network's size).
VIDEO_PRESETS = ("c3d", "c3d_noflip", "center", "none")


def video_pipeline(spec: str | list[dict[str, Any]], *, crop_size: int, train: bool, mean, std, where: str):
    """An albumentations pipeline for clips (applied to all frames at once through ``images=``)."""
    if isinstance(spec, str):
        if spec not in VIDEO_PRESETS:
            raise ValueError(f"{where}: unknown video preset {spec!r}; presets: {', '.join(VIDEO_PRESETS)}")
        crop = {"height": crop_size, "width": crop_size}
        if spec == "none":
            steps: list[dict[str, Any]] = []
        elif spec == "center" or not train:
            steps = [{"name": "CenterCrop", **crop}]
        else:
            steps = [{"name": "RandomCrop", **crop}]
            if spec == "c3d":
                steps.append({"name": "HorizontalFlip", "p": 0.5})
    else:
        steps = list(spec)
    return build_pipeline(steps, image_size=crop_size, train=train, mean=mean, std=std, where=where)


class VideoFolderDataModule(BaseDataModule):
    """Video classification data: video files or frame folders per class, with UCF101, Kinetics or MMAction2
    split lists; random training clips and evenly spaced evaluation clips x crops (C3D, Tran et al. 2015
    Section 3), decoding only the frames a clip needs.
    """
    def __init__(
        self,
        root: str,
        clip_len: int = 16,
        frame_stride: int = 1,
        clips_per_video: int = 10,
        batch_size: int = 8,
        num_workers: int = 0,
        resize: int | tuple[int, int] | None = (128, 171),
        crop_size: int = 112,
        train_transforms: str | list[dict[str, Any]] = "c3d",
        eval_transforms: str | list[dict[str, Any]] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        split: int = 1,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        list_format: Literal["auto", "ucf101", "kinetics", "mmaction", "folder"] = "auto",
        list_files: dict[str, str] | None = None,
        train_sampling: Literal["random", "uniform"] = "random",
        short_video_policy: Literal["loop", "pad"] = "loop",
        cache_dir: str | None = None,
        skip_corrupt: bool = False,
        synthetic: bool = False,
        synthetic_videos_per_class: dict[str, int] | None = None,
        synthetic_num_frames: int = 32,
        synthetic_frame_size: tuple[int, int] = (64, 86),
        predict_root: str | None = None,
        pin_memory: bool = False,
        drop_last: bool | None = None,
        crops_per_clip: int = 1,
        streaming: bool = False,
        streaming_cache_dir: str | None = None,
    ):
        """
        Args:
            root: ``<class>/<video>`` folders, with UCF101's ``classInd.txt``/``trainlistNN.txt``/
                ``testlistNN.txt`` in ``root`` or ``root/ucfTrainTestlist`` when the split is given.
            clip_len: frames per clip (16 for C3D). frame_stride: take every n-th frame.
            clips_per_video: uniformly spaced clips per video at evaluation (video accuracy averages their
                softmax; the count is part of the metric's name).
            batch_size: clips per training batch; videos (of ``clips_per_video`` clips each) per evaluation batch.
            resize: (H, W) every frame is resized to when decoded (C3D: 128x171), or an int: the short side is
                resized to it and the aspect ratio kept (128 turns UCF101's 240x320 into 128x171); None keeps the
                file's size.
            crop_size: the network's input size (C3D: 112).
            train_transforms, eval_transforms: a preset (``c3d``, ``c3d_noflip``, ``center``, ``none``) or a
                list of albumentations transforms; normalisation is appended. Eval defaults to the train
                preset's evaluation form.
            split: which UCF101 split lists to read (1, 2 or 3). Without lists: ``val_fraction`` and
                ``test_fraction`` of each class, chosen with ``split_seed``.
            list_format: where the splits come from (``densecnn.data.video_lists``): ``auto`` (default: UCF101's
                ``classInd.txt`` lists if present, else Kinetics' ``train.csv``/``validate.csv``/``test.csv`` in
                ``root`` or ``root/annotations``, else the per-class folder split), ``ucf101``, ``kinetics``,
                ``mmaction`` (MMAction2 list files, ``list_files``: ``{train, val[, test]}`` paths relative to
                ``root``) or ``folder``. Samples may be video files or frame folders (``<video>/img_00001.jpg``).
            train_sampling: ``random`` (one random clip per video per epoch) or ``uniform`` (every video's
                ``clips_per_video`` clips; the feature protocol's training set).
            short_video_policy: ``loop`` or ``pad`` for videos shorter than a clip (``densecnn.data.video``).
            cache_dir: keep decoded, resized frames there as ``.npy`` (decode once, read many times).
            skip_corrupt: drop unreadable or truncated videos with a warning instead of failing on them.
            synthetic: when ``root`` holds no videos, first write the embedded synthetic dataset there
                (``synthetic_videos_per_class`` {train, test}, ``synthetic_num_frames``, ``synthetic_frame_size``).
            predict_root: videos to ``predict`` on (flat or in class folders); defaults to the test split.
            crops_per_clip: views per clip at evaluation and predict: 1 (the eval transform's crop, normally the
                centre) or 3 (``crop_size`` squares at the left, centre and right of the long side, C3D /
                MMAction2's ThreeCrop); video accuracy averages the softmax over all clips x crops views, and
                the count is part of the metric's name.
            streaming: ``root`` is ``python -m densecnn.data.convert video`` output (local or ``s3://``/``gs://``):
                the encoded videos with the converted splits; the same clips and batches as the files.
                ``cache_dir`` does not apply (each read decodes from a scratch copy of the encoded file).
        """
        if crops_per_clip not in (1, 3):
            raise ConfigError(f"data.init_args.crops_per_clip must be 1 (one crop) or 3 (left/centre/right), got "
                              f"{crops_per_clip}")
        if list_format not in LIST_FORMATS:
            raise ConfigError(f"data.init_args.list_format must be one of {', '.join(LIST_FORMATS)}, got "
                              f"{list_format!r}")
        if list_files is not None and list_format not in ("auto", "mmaction"):
            raise ConfigError(f"data.init_args.list_files is for list_format 'mmaction', not {list_format!r}")
        super().__init__(root, batch_size, num_workers, pin_memory, drop_last=drop_last, streaming=streaming,
                         streaming_cache_dir=streaming_cache_dir)
        self.save_hyperparameters()
        self.clip_len, self.frame_stride, self.clips_per_video = clip_len, frame_stride, clips_per_video
        self.crops_per_clip = crops_per_clip  # views per clip at evaluation; names the video metrics
        self.crop_size = crop_size
        self.mean, self.std = tuple(mean), tuple(std)
        eval_spec = eval_transforms if eval_transforms is not None else (
            train_transforms if isinstance(train_transforms, str) else "center")
        self.train_transform = video_pipeline(train_transforms, crop_size=crop_size, train=True, mean=mean, std=std,
                                              where="data.init_args.train_transforms")
        self.eval_transform = video_pipeline(eval_spec, crop_size=crop_size, train=False, mean=mean, std=std,
                                             where="data.init_args.eval_transforms")
        self.predict_root = Path(predict_root) if predict_root else None
        self.class_names: list[str] = []

    def prepare_data(self) -> None:
        h = self.hparams
        if h.synthetic and not self.streaming and not has_files(self.root, VIDEO_SUFFIXES):
            write_video_dataset(self.root, videos_per_class=h.synthetic_videos_per_class,
                                num_frames=h.synthetic_num_frames, frame_size=tuple(h.synthetic_frame_size))

    def _dataset(self, samples, *, train: bool) -> VideoClipDataset:
        h = self.hparams
        sampling = h.train_sampling if train else "uniform"
        return VideoClipDataset(samples, clip_len=h.clip_len, frame_stride=h.frame_stride, sampling=sampling,
                                clips_per_video=h.clips_per_video,
                                transform=self.train_transform if train else self.eval_transform,
                                frames=self.stream_frames if self.streaming else FrameStore(h.resize, h.cache_dir),
                                short_video_policy=h.short_video_policy,
                                skip_corrupt=h.skip_corrupt, crops_per_clip=1 if train else h.crops_per_clip,
                                crop_size=h.crop_size)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self.check_root(" (set data.init_args.synthetic: true to generate the embedded synthetic data there)")
        if self.streaming:
            self.class_names, splits = self._stream_splits()
        else:
            self.class_names, splits = video_splits(self.root, list_format=h.list_format, split=h.split,
                                                    val_fraction=h.val_fraction, test_fraction=h.test_fraction,
                                                    seed=h.split_seed, list_files=h.list_files)
        self.splits = splits
        self.descriptor_sets: dict[str, Dataset] = {}  # the feature protocol's, set by the task per fit
        if stage in ("fit", None):
            self.train_set = self._dataset(splits["train"], train=True)
        if stage in ("fit", "validate", None):
            self.val_set = self._dataset(self._nonempty(splits, "val"), train=False)
        if stage in ("test", None):
            self.test_set = self._dataset(self._nonempty(splits, "test"), train=False)
        if stage == "predict":
            self.predict_set = self._dataset(self._predict_samples(splits), train=False)

    # ---- the feature protocol (tasks.video): each video embedded once, then the probe trains on descriptors ----
    def descriptor_source(self, split: Literal["train", "val"]) -> VideoClipDataset:
        """The ``split``'s videos as the feature protocol embeds them, the training videos included: the
        evaluation transform on ``clips_per_video`` uniform clips (x ``crops_per_clip`` crops), no random draw."""
        samples = self.splits["train"] if split == "train" else self._nonempty(self.splits, "val")
        return self._dataset(samples, train=False)

    def descriptor_identity(self, dataset: VideoClipDataset) -> dict[str, Any]:
        """What a ``descriptor_source`` dataset's descriptors depend on besides the backbone: every sample's file
        (path, label, size, modification time) and the clip and transform settings. The feature cache's key."""
        h = self.hparams
        files = []
        for path, label in dataset.samples:
            stat = Path(path).stat()
            files.append([str(path), int(label), stat.st_size, stat.st_mtime_ns])
        return {"files": files, "transform": repr(self.eval_transform),
                **{key: h[key] for key in ("clip_len", "frame_stride", "clips_per_video", "crops_per_clip",
                                           "crop_size", "resize", "short_video_policy")}}

    def use_descriptors(self, datasets: dict[str, Dataset]) -> None:
        """Serve these datasets (``train``, ``val``) instead of the videos for the rest of this fit."""
        self.descriptor_sets = dict(datasets)

    def train_dataloader(self):
        descriptors = getattr(self, "descriptor_sets", {})
        return self.train_loader(descriptors["train"]) if "train" in descriptors else super().train_dataloader()

    def val_dataloader(self):
        descriptors = getattr(self, "descriptor_sets", {})
        return self.eval_loader(descriptors["val"]) if "val" in descriptors else super().val_dataloader()

    def _stream_splits(self) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        """The converted splits' (path, label) lists and a frame store that reads their records."""
        meta = self.stream_meta("video")
        splits = {name: [(path, label) for path, label in info["samples"]] for name, info in meta["splits"].items()}
        records = {name: self.stream_records(name) for name in splits}
        locations = {path: (name, i) for name, samples in splits.items() for i, (path, _) in enumerate(samples)}
        self.stream_frames = StreamingFrameStore(records, locations, self.hparams.resize)
        return list(meta["class_names"]), {name: splits.get(name, []) for name in ("train", "val", "test")}

    def _nonempty(self, splits: dict, name: str) -> list:
        if not splits[name]:
            raise DataError(f"{self.root}: the {name} split is empty (raise data.init_args.{name}_fraction or add "
                            f"videos)")
        return splits[name]

    def _predict_samples(self, splits: dict) -> list[tuple[str, int]]:
        if self.predict_root is None:
            return self._nonempty(splits, "test")
        if not self.predict_root.is_dir():
            raise DataError(f"data.init_args.predict_root: {self.predict_root} does not exist")
        # class folders, or flat: videos and frame folders directly in predict_root
        if any(p.is_dir() and not p.name.startswith(".") and not is_frame_dir(p) for p in self.predict_root.iterdir()):
            classes = find_video_classes(self.predict_root)
            index = {name: i for i, name in enumerate(self.class_names)}
            return [(str(p), index.get(c, -1)) for c in classes for p in samples_in(self.predict_root / c)]
        videos = [str(p) for p in samples_in(self.predict_root)]
        if not videos:
            raise DataError(f"{self.predict_root}: no {SAMPLE_KINDS} to predict on")
        return [(p, -1) for p in videos]
