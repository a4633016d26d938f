"""The feature protocol (Tran et al. Sec. 3.3/4.1): a frozen backbone that must load completely, each training and
validation video embedded once per fit (and not at all when the disk cache holds it), a linear probe trained on
the cached descriptors exactly as on descriptors computed directly."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch

from densecnn import create_backbone
from densecnn.errors import ConfigError, UserError
from tasks import VideoClassificationTask
from tasks.datamodules.video import VideoFolderDataModule

TINY_C3D = {"width_mult": 0.125, "batch_norm": True}
CLIPS = 2


def backbone_file(tmp_path, seed: int, drop: str | None = None):
    torch.manual_seed(seed)
    state = create_backbone("c3d", num_classes=0, input_size=(3, 8, 28, 28), **TINY_C3D).state_dict()
    if drop:
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
    path = tmp_path / f"c3d_seed{seed}{'_no_' + drop if drop else ''}.pth"
    torch.save(state, path)
    return str(path)


def make_task(weights: str, **kwargs) -> VideoClassificationTask:
    torch.manual_seed(0)  # the probe's initialisation
    return VideoClassificationTask(backbone="c3d", num_classes=6, clip_len=8, crop_size=28, backbone_kwargs=TINY_C3D,
                                   weights=weights, feature_protocol=True, optimizer="sgd", lr=0.5, momentum=0.9,
                                   weight_decay=0.0, **kwargs)


def make_data(root) -> VideoFolderDataModule:
    # 24 training videos in one batch: full-batch steps, whose result does not depend on the shuffle
    return VideoFolderDataModule(str(root), clip_len=8, clips_per_video=CLIPS, batch_size=24, resize=(32, 44),
                                 crop_size=28, train_transforms="c3d_noflip")


def fit_counting_clips(task, datamodule, tmp_path, epochs: int = 3) -> int:
    """Fit and return how many clips went through the backbone (a forward hook on its first stage)."""
    seen = []
    hook = task.backbone.stage1.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(task, datamodule)
    hook.remove()
    return sum(seen)


def test_each_video_is_embedded_once_and_the_probe_equals_training_on_direct_descriptors(tmp_path, video_root):
    task = make_task(backbone_file(tmp_path, 1))
    initial_probe = copy.deepcopy(task.probe)
    datamodule = make_data(video_root)
    clips = fit_counting_clips(task, datamodule, tmp_path)
    n_train, n_val = len(datamodule.splits["train"]), len(datamodule.splits["val"])
    assert (n_train, n_val) == (24, 12)
    assert clips == (n_train + n_val) * CLIPS  # every view of every train/val video, once over 3 epochs

    # oracle: descriptors computed directly (eval transform, uniform clips), then 3 full-batch SGD steps
    def direct(split):
        dataset = datamodule.descriptor_source(split)
        items = [dataset[i] for i in range(len(dataset))]
        with torch.no_grad():
            features = torch.cat([task.extract_features(item["video"].unsqueeze(0)) for item in items])
        return features, torch.tensor([int(item["label"]) for item in items])

    features, labels = direct("train")
    probe = initial_probe
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.MultiMarginLoss()(probe(features), labels).backward()
        optimizer.step()
    torch.testing.assert_close(task.probe.weight, probe.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(task.probe.bias, probe.bias, rtol=1e-4, atol=1e-5)

    val_features, val_labels = direct("val")
    with torch.no_grad():
        accuracy = (probe(val_features).argmax(1) == val_labels).float().mean()
    assert float(task.trainer.callback_metrics["val/video_acc1_2clips_1crop"]) == pytest.approx(float(accuracy))


def test_a_disk_cache_skips_the_backbone_and_a_changed_checkpoint_embeds_again(tmp_path, video_root):
    cache = tmp_path / "cache"
    first, second = backbone_file(tmp_path, 1), backbone_file(tmp_path, 2)
    full = (24 + 12) * CLIPS
    assert fit_counting_clips(make_task(first, feature_cache_dir=str(cache)), make_data(video_root), tmp_path,
                              epochs=1) == full
    assert len(list(cache.glob("*.pt"))) == 2 and not list(cache.glob(".*tmp"))  # train and val, no leftovers
    assert fit_counting_clips(make_task(first, feature_cache_dir=str(cache)), make_data(video_root), tmp_path,
                              epochs=1) == 0
    assert fit_counting_clips(make_task(second, feature_cache_dir=str(cache)), make_data(video_root), tmp_path,
                              epochs=1) == full
    assert len(list(cache.glob("*.pt"))) == 4


def test_a_checkpoint_that_does_not_fill_the_frozen_backbone_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"model.init_args.weights: .*c3d_seed1_no_fc6.pth: keys do not match C3D; "
                                        r"missing in the file: fc6.weight, fc6.bias"):
        make_task(backbone_file(tmp_path, 1, drop="fc6"))
    with pytest.raises(ConfigError, match="strict_weights: false cannot be used with feature_protocol"):
        make_task(backbone_file(tmp_path, 1), strict_weights=False)
    task = make_task(backbone_file(tmp_path, 1))  # the complete file loads (no fc8 needed in feature mode)
    reference = torch.load(backbone_file(tmp_path, 1), weights_only=True)
    torch.testing.assert_close(task.backbone.fc6.weight, reference["fc6.weight"], rtol=0, atol=0)
