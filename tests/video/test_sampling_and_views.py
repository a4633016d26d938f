"""Video sampling and views: per-clip augmentation draws under ``uniform`` training sampling, the tolerated
frame-count shortfall, the C3D recipe's schedule, short-side resizing, and three-crop evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from densecnn.data import DataError
from densecnn.data.seeding import SeededDataset, sample_seed
from densecnn.data.synthetic.video import write_mp4
from densecnn.data.video import (FrameStore, VideoClipDataset, check_frame_count, decode_video, resized_shape,
                                 three_crop_offsets)
from densecnn.errors import ConfigError
from tasks.datamodules.video import VideoFolderDataModule, video_pipeline
from tests.helpers import QUICKSTART

CONFIGS = QUICKSTART.parent


class CoordinateFrames(FrameStore):
    """Frames whose pixel (t, y, x) holds (y, x, t): a view's crop offset, flip and first frame can be read
    back from its pixels."""

    def __init__(self, num_frames: int = 20, height: int = 24, width: int = 32):
        super().__init__(resize=None, seek=False)  # frames come from load(), as for a cached video
        t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing="ij")
        self.array = np.stack([y, x, t], axis=-1).astype(np.uint8)

    def load(self, path) -> np.ndarray:
        return self.array


def read_view(view: torch.Tensor) -> tuple[int, int, bool, int]:
    """(top, left, flipped, first frame) of a (C, T, H, W) view normalised with mean 0, std 1 (pixels / 255)."""
    pixels = (view * 255).round().long()
    y, x, t = pixels[:, 0]  # the first frame's channels
    flipped = bool(x[0, 1] < x[0, 0])
    return int(y[0, 0]), int(x[0, -1] if flipped else x[0, 0]), flipped, int(t[0, 0])


def _uniform_train_set(video_root: Path) -> VideoFolderDataModule:
    dm = VideoFolderDataModule(str(video_root), clip_len=4, clips_per_video=3, crop_size=16, mean=(0, 0, 0),
                               std=(1, 1, 1), train_sampling="uniform", train_transforms="c3d")
    dm.setup("fit")
    dm.train_set.frames = CoordinateFrames()
    return dm


def _draws(dataset, base_seed: int, epochs: int, items: int) -> list[tuple[int, int, bool, int]]:
    seeded = SeededDataset(dataset, base_seed)
    return [read_view(view) for epoch in range(epochs) for index in range(items)
            for view in seeded[index, sample_seed(base_seed, epoch, index)]["video"]]


def test_uniform_training_gives_every_clip_its_own_crop_and_flip(video_root):
    """Every clip of every video in every epoch draws its own crop and flip (it used to be one fixed crop,
    never flipped); the clip starts stay the uniform ones; the same seed repeats the draws exactly."""
    dm = _uniform_train_set(video_root)
    draws = _draws(dm.train_set, base_seed=3, epochs=3, items=4)  # 3 epochs x 4 videos x 3 clips
    assert len(draws) == 36
    assert {t for *_, t in draws} == {0, 8, 16}  # uniform_starts(20, 4, 3)
    offsets = {(y, x) for y, x, _, _ in draws}
    assert len(offsets) >= 12 and all(0 <= y <= 8 and 0 <= x <= 16 for y, x in offsets)
    flips = sum(f for _, _, f, _ in draws)
    assert 8 <= flips <= 28  # p = 0.5 over 36 draws
    first_video = draws[:3]
    assert len({(y, x, f) for y, x, f, _ in first_video}) > 1  # the clips of one video differ too
    assert _draws(_uniform_train_set(video_root).train_set, base_seed=3, epochs=3, items=4) == draws
    assert _draws(dm.train_set, base_seed=4, epochs=3, items=4) != draws


def test_uniform_training_draws_through_the_datamodule_loader(video_root, monkeypatch):
    """The real path: train_dataloader (EpochSampler + SeededDataset); epochs differ, reruns repeat."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")

    def epoch_views(epoch: int) -> list:
        dm = _uniform_train_set(video_root)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batch = next(iter(loader))
        return [read_view(v) for video in batch["video"] for v in video]

    first = epoch_views(0)
    assert first == epoch_views(0)
    assert first != epoch_views(1)
    assert len({(y, x, f) for y, x, f, _ in first}) > 3


# ---- frame count --------------------------------------------------------------------------------------------
def test_frame_count_tolerates_a_small_shortfall_and_refuses_truncation():
    check_frame_count("a.mp4", 100, 100)
    for announced, decoded in ((100, 99), (100, 98), (1000, 990)):  # 2 frames, or 1% when that is more
        with pytest.warns(UserWarning, match=r"a\.mp4.*announces"):
            check_frame_count("a.mp4", announced, decoded)
    for announced, decoded in ((100, 97), (1000, 989), (12, 6)):
        with pytest.raises(DataError, match=r"a\.mp4: truncated video"):
            check_frame_count("a.mp4", announced, decoded)


@pytest.mark.parametrize("extra, tolerated", [(1, True), (2, True), (3, False)])
def test_decoding_a_file_whose_header_overcounts(tmp_path, monkeypatch, extra, tolerated):
    """A real MP4 whose header announces ``extra`` frames more than decode (PyAV issue 976)."""
    import densecnn.data.video as video

    path = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 256, size=(12, 32, 48, 3), dtype=np.uint8)
    write_mp4(path, frames)
    real = video.announced_frames
    monkeypatch.setattr(video, "announced_frames", lambda stream: real(stream) + extra)
    if tolerated:
        with pytest.warns(UserWarning, match=f"clip.mp4: its header announces {12 + extra} frames but 12"):
            decoded = decode_video(path, resize=None)
        assert decoded.shape == (12, 32, 48, 3)
    else:
        with pytest.raises(DataError, match="clip.mp4: truncated video"):
            decode_video(path, resize=None)


# ---- recipes ---------------------------------------------------------------------------------------------------
def test_ucf101_recipe_follows_the_c3d_schedule():
    """Tran et al. 2015: lr 0.003, divided by 10 every 4 epochs, stopped after 16 epochs."""
    config = yaml.safe_load((CONFIGS / "video" / "ucf101_c3d.yaml").read_text())
    model = config["model"]["init_args"]
    assert model["lr_scheduler"] == "step"
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=model["lr"])
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, **model["lr_scheduler_kwargs"])
    rates = []
    for _ in range(config["trainer"]["max_epochs"]):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    np.testing.assert_allclose(rates, [3e-3] * 4 + [3e-4] * 4 + [3e-5] * 4 + [3e-6] * 4, rtol=1e-9)


def test_short_side_resize_matches_c3d_and_the_quickstart_resizes(video_root):
    assert resized_shape(240, 320, 128) == (128, 171)  # UCF101 -> C3D's 128x171
    assert resized_shape(96, 96, 36) == (36, 36) and resized_shape(50, 30, 36) == (60, 36)
    assert resized_shape(240, 320, (112, 112)) == (112, 112) and resized_shape(7, 9, None) == (7, 9)
    data = yaml.safe_load((QUICKSTART / "video.yaml").read_text())["data"]["init_args"]
    assert isinstance(data["resize"], int) and data["crop_size"] <= data["resize"] <= 1.25 * data["crop_size"]
    assert resized_shape(96, 96, data["resize"]) == (32, 32)  # a user's 96x96 video: the crop sees all of it
    frames = decode_video(video_root / "grow" / "grow_0000.mp4", resize=36)
    assert frames.shape == (12, 36, 50, 3)  # 32x44 scaled by 36/32, aspect kept


# ---- three crops -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, expected", [
    (24, 32, [(2, 0), (2, 6), (2, 12)]),   # landscape: left, centre, right
    (32, 24, [(0, 2), (6, 2), (12, 2)]),   # portrait: top, centre, bottom
    (128, 171, [(8, 0), (8, 29), (8, 59)]),  # C3D's frames and 112 crops
])
def test_three_crop_offsets(height, width, expected):
    crop = 112 if height == 128 else 20
    assert three_crop_offsets(height, width, crop) == expected


def test_three_crops_per_clip_yield_the_views_at_their_offsets():
    transform = video_pipeline("c3d", crop_size=20, train=False, mean=(0, 0, 0), std=(1, 1, 1), where="t")
    dataset = VideoClipDataset([("v.mp4", 0)], clip_len=4, sampling="uniform", clips_per_video=2,
                               transform=transform, frames=CoordinateFrames(), crops_per_clip=3, crop_size=20)
    item = dataset[0]
    assert item["video"].shape == (6, 3, 4, 20, 20)
    views = [read_view(v) for v in item["video"]]
    expected = [(2, x, False, t) for t in (0, 16) for x in (0, 6, 12)]  # clip-major, starts of uniform_starts
    assert views == expected
    assert item["starts"].tolist() == [0, 0, 0, 16, 16, 16]
    assert item["crops"].tolist() == [[2, 0], [2, 6], [2, 12]] * 2
    with pytest.raises(DataError, match="v.mp4"):
        VideoClipDataset([("v.mp4", 0)], sampling="uniform", frames=CoordinateFrames(), crops_per_clip=3,
                         crop_size=30)[0]
    with pytest.raises(ValueError, match="crops_per_clip"):
        VideoClipDataset([("v.mp4", 0)], crops_per_clip=2)


def test_video_prediction_averages_the_softmax_over_all_views(video_root):
    """With 2 clips x 3 crops the video probabilities equal the mean of the six views' softmax, each view
    scored on its own (hand computation), and the metric names say 3crop."""
    from pytorch_lightning import Trainer

    from tasks import VideoClassificationTask

    torch.manual_seed(0)
    dm = VideoFolderDataModule(str(video_root), clip_len=8, clips_per_video=2, crops_per_clip=3, batch_size=2,
                               resize=(32, 44), crop_size=28, train_transforms="c3d_noflip")
    task = VideoClassificationTask(backbone="c3d", backbone_kwargs={"width_mult": 0.25, "batch_norm": True},
                                   num_classes=6, clip_len=8, crop_size=28, channels_last=False).eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["video"].shape == (2, 6, 3, 8, 28, 28)
    with torch.no_grad():
        _, outputs = task.compute_loss(batch, "test")
        by_hand = torch.stack([torch.stack([task.backbone(view[None])[0].softmax(0) for view in video]).mean(0)
                               for video in batch["video"]])
    torch.testing.assert_close(outputs["video_probs"], by_hand, rtol=1e-5, atol=1e-6)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_test_batches=1, enable_checkpointing=False)
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert "test/video_acc1_2clips_3crop" in metrics
    with pytest.raises(ConfigError, match="data.init_args.crops_per_clip"):
        VideoFolderDataModule(str(video_root), crops_per_clip=5)
