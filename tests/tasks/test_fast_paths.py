"""Fast paths every task shares (``BaseTask``): ``channels_last``, ``compile`` and ``bf16-mixed``.

The oracle for the first two is the same task without them: same weights, same batch, the same outputs
(``channels_last`` only changes strides; ``torch.compile`` traces the same operations), and the same
``state_dict`` keys, so a checkpoint moves between the two. ``bf16-mixed`` takes a real optimizer step through
the Trainer for every family, and the metrics are updated with float32 tensors, outside autocast.
"""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from densecnn.data.detection import DetectionDataset, build_detection_pipeline, detection_collate, read_coco

FAMILIES = ["classification", "overfeat", "rcnn", "fast_rcnn", "faster_rcnn", "dense", "video"]
DETECTORS = {"overfeat", "rcnn", "fast_rcnn", "faster_rcnn"}
SMALL_DENSE_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                        scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])
SMALL_RESNET = {"backbone": "resnet18", "backbone_kwargs": {"widths": [8, 16, 32, 64]}}


def make_task(family: str, **options):
    """A small task of each family, seeded so two calls give the same weights."""
    from tasks import (ClassificationTask, DensePredictionTask, FasterRCNNTask, FastRCNNTask, OverFeatTask, RCNNTask,
                       VideoClassificationTask)

    torch.manual_seed(0)
    detector = {**SMALL_RESNET, "num_classes": 3, "score_thresh": 0.0, **options}
    if family == "classification":
        return ClassificationTask(backbone="cifar_resnet20", num_classes=6, **options)
    if family == "rcnn":
        return RCNNTask(crop_size=32, context=4, rois_per_image=8, classifier="svm", **detector)
    if family == "fast_rcnn":
        return FastRCNNTask(feature_index=1, roi_op="pool", roi_size=4, hidden_dim=16, rois_per_image=8, **detector)
    if family == "overfeat":
        return OverFeatTask(feature_index=2, window=32, scales=[1.0, 1.5], hidden_dim=16, windows_per_image=16,
                            **detector)
    if family == "faster_rcnn":
        return FasterRCNNTask(box_head="last_stage", anchor_sizes=[16, 32, 64], rpn_pre_nms_top_n_train=200,
                              rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50,
                              box_batch_size_per_image=16, **detector)
    if family == "dense":
        return DensePredictionTask(backbone="cifar_resnet20", targets=["depth", "normals", "semantic"], num_classes=5,
                                   **SMALL_DENSE_HEAD, **options)
    return VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                   backbone_kwargs={"width_mult": 0.125, "batch_norm": True}, **options)


def example_batch(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if family == "video":
        return {"video": torch.randn(2, 3, 8, 28, 28, generator=g), "label": torch.tensor([0, 3])}
    if family == "dense":
        return {"image": torch.randn(2, 3, 48, 64, generator=g)}
    if family == "classification":
        return {"image": torch.randn(2, 3, 32, 32, generator=g), "label": torch.tensor([1, 5])}
    boxes = torch.tensor([[4.0, 6, 30, 40], [20, 10, 60, 50], [0, 0, 63, 63], [33, 35, 60, 62]])
    return {"image": torch.randn(2, 3, 64, 64, generator=g), "scale": torch.ones(2),
            "image_size": torch.tensor([[64, 64], [56, 64]]), "proposals": [boxes, boxes[1:] + 1.5]}


def network_outputs(task, family: str, batch: dict) -> list[torch.Tensor]:
    """What each family's network computes on ``batch`` (eval mode), as the Trainer would feed it."""
    batch = task.on_after_batch_transfer(batch, 0)
    with torch.no_grad():
        if family in DETECTORS:
            # the backbone's maps (exact) and the final detections (through NMS: compared where it is stable)
            maps = task.backbone.forward_features(batch["image"])
            detections = task.detect(batch["image"], batch)
            return [*maps, *[d[k] for d in detections for k in ("boxes", "scores", "labels")]]
        out = task(batch["video" if family == "video" else "image"])
        return list(out.values()) if isinstance(out, dict) else [out]


def assert_same_outputs(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        scale = e.abs().max().clamp_min(1e-6) if e.is_floating_point() and e.numel() else 1.0
        torch.testing.assert_close(g, e, rtol=rtol, atol=float(rtol * scale))


@pytest.mark.parametrize("family", FAMILIES)
def test_channels_last_gives_the_same_outputs_and_keys(family):
    plain = make_task(family, channels_last=False).eval()
    fast = make_task(family, channels_last=True).eval()
    weights = {k: v for k, v in fast.state_dict().items() if v.dim() in (4, 5)}
    assert weights and all(v.is_contiguous(memory_format=torch.channels_last if v.dim() == 4
                                           else torch.channels_last_3d) for v in weights.values())
    assert list(fast.state_dict()) == list(plain.state_dict())
    batch = example_batch(family)
    key = "video" if family == "video" else "image"
    converted = fast.on_after_batch_transfer(dict(batch), 0)[key]
    assert converted.is_contiguous(memory_format=torch.channels_last if converted.dim() == 4
                                   else torch.channels_last_3d)
    torch.testing.assert_close(converted, batch[key], rtol=0, atol=0)
    assert_same_outputs(network_outputs(fast, family, batch), network_outputs(plain, family, batch), rtol=1e-5)


def test_video_keeps_channels_last_on_by_default_and_old_configs_valid():
    from tasks import VideoClassificationTask

    task = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                   backbone_kwargs={"width_mult": 0.125})
    assert task.hparams.channels_last is True
    conv = next(m for m in task.backbone.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    off = VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28,
                                  backbone_kwargs={"width_mult": 0.125}, channels_last=False)
    conv = next(m for m in off.backbone.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


# dynamo's "eager" backend: the graph capture and guards torch.compile uses, without inductor's C++ build
# (minutes on this CPU); ``test_inductor_compile_matches_eager`` runs the real backend behind ``slow``. Tracing
# takes 5-10 s per family on 2 cores: video and Faster R-CNN (the two overrides of ``compile_targets`` that are
# not the default) run in the default suite, the rest in the slow one.
FAST_COMPILE = {"video", "faster_rcnn"}


@pytest.mark.parametrize("family", [f if f in FAST_COMPILE else pytest.param(f, marks=pytest.mark.slow)
                                    for f in FAMILIES])
def test_compile_gives_the_same_outputs_and_keys(family):
    plain = make_task(family).eval()
    compiled = make_task(family, compile=True, compile_kwargs={"backend": "eager"}).eval()
    keys = list(compiled.state_dict())
    compiled.configure_model()  # what the Trainer calls
    targets = compiled.compile_targets()
    assert targets and all(getattr(module, name) is not getattr(type(module), name, None) for module, name in targets)
    assert list(compiled.state_dict()) == keys == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in keys)
    plain.load_state_dict(compiled.state_dict(), strict=True)  # both ways, as checkpoints do
    compiled.load_state_dict(plain.state_dict(), strict=True)
    batch = example_batch(family)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        counters_before = dict(torch._dynamo.utils.counters["stats"])
        got = network_outputs(compiled, family, batch)
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"] - counters_before.get("unique_graphs", 0)
    assert frames >= 1  # the compiled path really ran
    assert_same_outputs(got, network_outputs(plain, family, batch), rtol=1e-4)


def test_compile_options_and_bad_mode():
    from densecnn.errors import UserError  # noqa: F401  (ConfigError/ValueError family: the key is named)

    task = make_task("classification", compile=True, compile_mode="max-autotune", compile_kwargs={"dynamic": False})
    assert task.compile_options() == {"mode": "max-autotune", "dynamic": False}
    assert make_task("classification", compile=True, compile_mode="default").compile_options() == {}
    with pytest.raises(ValueError, match="model.init_args.compile_mode: 'fastest' is not one of"):
        make_task("classification", compile=True, compile_mode="fastest")


@pytest.fixture(scope="module")
def checkpoint_data(classification_root):
    from tasks.datamodules import ImageFolderDataModule

    return ImageFolderDataModule(str(classification_root), image_size=32, batch_size=8, num_workers=0)


def _fit_one_step(task, datamodule, tmp_path, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(task, datamodule=datamodule)
    return trainer


@pytest.mark.slow
def test_checkpoints_move_between_compiled_and_plain_tasks(checkpoint_data, tmp_path):
    """A compiled task trains a step (aot_eager: forward and backward through the captured graph) and saves;
    the checkpoint loads into a plain task with identical tensors, and a plain task's into a compiled one."""
    from tasks import ClassificationTask

    torch._dynamo.reset()
    task = make_task("classification", compile=True, compile_kwargs={"backend": "aot_eager"}, channels_last=True)
    trainer = _fit_one_step(task, checkpoint_data, tmp_path)
    assert trainer.global_step == 1
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in saved) and list(saved) == list(task.state_dict())
    plain = ClassificationTask.load_from_checkpoint(path, compile=False, channels_last=False)
    for k, v in task.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[k], v, rtol=0, atol=0)
    path2 = tmp_path / "plain.ckpt"
    trainer2 = _fit_one_step(plain, checkpoint_data, tmp_path)
    trainer2.save_checkpoint(path2)
    back = ClassificationTask.load_from_checkpoint(path2, compile=True, compile_kwargs={"backend": "eager"})
    back.configure_model()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    """The real backend (inductor's C++ kernels on CPU), forward and one backward, against eager PyTorch."""
    torch._dynamo.reset()
    plain = make_task("classification")
    compiled = make_task("classification", compile=True)
    compiled.configure_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 3])
    grads = []
    for task in (plain, compiled):
        task.train()
        loss, _ = task.compute_loss({"image": x, "label": labels}, "val")
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None})
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-4)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-4)


# ---- bf16-mixed: one training step per family, metrics in float32 ------------------------------------------
class MetricInputs(pl.Callback):
    """Records the dtypes of every floating tensor ``update_metrics`` receives, and the first conv's output."""

    def __init__(self, task):
        self.dtypes: set[torch.dtype] = set()
        self.state_dtypes: set[torch.dtype] = set()
        self.autocast: list[bool] = []
        original = task.update_metrics

        def spy(stage, outputs, batch):
            self.dtypes.update(_floating_dtypes(outputs))
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            original(stage, outputs, batch)
            # the torchmetrics states just updated (detection's per-image lists are reset at epoch end)
            self.state_dtypes.update(_floating_dtypes([getattr(m, name) for m in task.modules()
                                                       if hasattr(m, "_defaults") for name in m._defaults]))

        task.update_metrics = spy
        self.conv_dtypes: list[torch.dtype] = []
        conv = next(m for m in task.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
        conv.register_forward_hook(lambda module, args, out: self.conv_dtypes.append(out.dtype))


def _floating_dtypes(obj):
    if isinstance(obj, torch.Tensor):
        return {obj.dtype} if obj.is_floating_point() else set()
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return set().union(*(_floating_dtypes(o) for o in obj)) if obj else set()
    return set()


@pytest.fixture(scope="module")
def family_data(tmp_path_factory, classification_root):
    """Per family, ``(train_dataloaders, val_dataloaders)`` or a DataModule, on tiny generated data."""
    from densecnn.data.synthetic.dense import write_dense_dataset
    from densecnn.data.synthetic.detection import write_detection_dataset
    from densecnn.data.synthetic.video import write_video_dataset
    from tasks.datamodules import ImageFolderDataModule
    from tasks.datamodules.dense import DenseDataModule
    from tasks.datamodules.video import VideoFolderDataModule

    base = tmp_path_factory.mktemp("fast_paths")
    coco = write_detection_dataset(base / "coco", image_size=64, splits={"train": 2, "val": 2}) or base / "coco"
    records, _, _ = read_coco(coco / "annotations" / "instances_train.json", coco / "train")
    rng = np.random.default_rng(0)
    proposals = {str(r.image_id): np.concatenate([r.boxes, r.boxes + rng.uniform(-3, 3, r.boxes.shape),
                                                  np.array([[0, 0, 40, 40], [20, 20, 63, 63]])]).astype(np.float32)
                 for r in records}
    detection = DetectionDataset(records, build_detection_pipeline(64, train=False), proposals=proposals)
    loader = DataLoader(detection, batch_size=2, collate_fn=detection_collate)
    dense = write_dense_dataset(base / "rooms", height=48, width=64, splits={"train": 2, "val": 2}) or base / "rooms"
    video = write_video_dataset(base / "video", videos_per_class={"train": 2, "test": 1}, num_frames=12,
                                frame_size=(32, 44))
    return {
        "classification": ImageFolderDataModule(str(classification_root), image_size=32, batch_size=4, num_workers=0),
        "detection": (loader, loader),
        "dense": DenseDataModule(str(dense), image_size=(48, 64), num_classes=5, batch_size=2),
        "video": VideoFolderDataModule(str(video), clip_len=8, clips_per_video=2, batch_size=3, resize=(32, 44),
                                       crop_size=28, val_fraction=0.5),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_mixed_training_step_with_float32_metrics(family, family_data, tmp_path):
    task = make_task(family)
    before = {k: v.clone() for k, v in task.state_dict().items() if v.is_floating_point()}
    record = MetricInputs(task)
    data = family_data["detection" if family in DETECTORS else family]
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, limit_train_batches=1,
                         limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[record])
    if isinstance(data, tuple):
        trainer.fit(task, train_dataloaders=data[0], val_dataloaders=data[1])
    else:
        trainer.fit(task, datamodule=data)
    assert trainer.global_step == 1
    assert record.conv_dtypes and record.conv_dtypes[0] == torch.bfloat16  # autocast really ran in bf16
    after = task.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step updated the weights
    assert all(after[k].dtype == before[k].dtype == torch.float32 for k in before)  # float32 master weights
    assert all(torch.isfinite(after[k]).all() for k in before)
    # the metrics saw float32 outputs with autocast off, hold float32 states and log float32 values
    assert record.autocast and not any(record.autocast)
    assert record.dtypes == {torch.float32}
    # (some metrics accumulate in float64 on purpose: sums of squared depth errors, COCO's per-image records)
    assert record.state_dtypes and record.state_dtypes <= {torch.float32, torch.float64}
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    assert logged and {v.dtype for v in logged.values()} == {torch.float32}
