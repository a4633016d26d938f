"""Video list formats: Kinetics CSVs (official layouts), frame folders, UCF101 entries resolving to frame folders,
MMAction2 lists, and the DataModule's ``list_format`` option."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densecnn.data import DataError
from densecnn.data.synthetic.video import write_mp4
from densecnn.data.video_lists import (find_video_classes, kinetics_clip_name, resolve_listed, samples_in,
                                      video_splits)
from densecnn.errors import ConfigError
from tasks.datamodules.video import VideoFolderDataModule

HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"
QUOTED = 'tying "bow" tie, fast'  # a label with a comma and quotes: the CSV quotes it as "tying ""bow"" tie, fast"


def tiny_mp4(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.full((3, 16, 16, 3), value, np.uint8))
    return path


def frame_folder(path: Path, num_frames: int = 3, suffix: str = ".jpg") -> Path:
    """``path/img_00001.jpg`` ... (MMAction2's rawframes naming)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path / f"img_{i + 1:05d}{suffix}")
    return path


def csv_row(label: str, youtube_id: str, start: int, split: str) -> str:
    quoted = '"' + label.replace('"', '""') + '"' if ("," in label or '"' in label) else label
    return f"{quoted},{youtube_id},{start},{start + 10},{split},0\n"


@pytest.fixture
def kinetics_root(tmp_path) -> Path:
    """cvdfoundation/kinetics-dataset after arranging by class: ``annotations/{train,validate,test}.csv``,
    ``train/<label>/<clip>.mp4``, ``val/<label>/<clip>.mp4``, and a flat ``test/`` with one frame folder."""
    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(
        HEADER + csv_row("abseiling", "aaaaaaaaaaa", 14, "train") + csv_row(QUOTED, "bbbbbbbbbbb", 0, "train")
        + csv_row("abseiling", "ccccccccccc", 95, "train") + csv_row("air drumming", "ddddddddddd", 7, "train")
        + csv_row("abseiling", "gonegonegon", 30, "train"))  # never downloaded (a YouTube takedown)
    (root / "annotations" / "validate.csv").write_text(
        HEADER + csv_row(QUOTED, "eeeeeeeeeee", 1, "val") + csv_row("air drumming", "fffffffffff", 2, "val"))
    (root / "annotations" / "test.csv").write_text(HEADER + csv_row("abseiling", "hhhhhhhhhhh", 3, "test"))
    for split, label, ytid, start in [("train", "abseiling", "aaaaaaaaaaa", 14), ("train", QUOTED, "bbbbbbbbbbb", 0),
                                      ("train", "abseiling", "ccccccccccc", 95),
                                      ("train", "air drumming", "ddddddddddd", 7),
                                      ("val", QUOTED, "eeeeeeeeeee", 1), ("val", "air drumming", "fffffffffff", 2)]:
        tiny_mp4(root / split / label / f"{kinetics_clip_name(ytid, start, start + 10)}.mp4")
    frame_folder(root / "test" / "hhhhhhhhhhh_000003_000013")
    return root


def test_kinetics_clip_names_follow_the_downloaders():
    assert kinetics_clip_name("---QUuC4vJs", 84, 94) == "---QUuC4vJs_000084_000094"


def test_kinetics_csvs_give_sorted_train_labels_and_the_clips_present(kinetics_root):
    root = kinetics_root
    with pytest.warns(UserWarning) as caught:
        classes, splits = video_splits(root)
    # classes: the sorted unique labels of train.csv, the quoted label read whole by the csv module
    assert classes == ["abseiling", "air drumming", QUOTED]
    clip = kinetics_clip_name
    assert splits["train"] == [
        (str(root / "train" / "abseiling" / f"{clip('aaaaaaaaaaa', 14, 24)}.mp4"), 0),
        (str(root / "train" / QUOTED / f"{clip('bbbbbbbbbbb', 0, 10)}.mp4"), 2),
        (str(root / "train" / "abseiling" / f"{clip('ccccccccccc', 95, 105)}.mp4"), 0),
        (str(root / "train" / "air drumming" / f"{clip('ddddddddddd', 7, 17)}.mp4"), 1)]
    assert splits["val"] == [(str(root / "val" / QUOTED / f"{clip('eeeeeeeeeee', 1, 11)}.mp4"), 2),
                             (str(root / "val" / "air drumming" / f"{clip('fffffffffff', 2, 12)}.mp4"), 1)]
    assert splits["test"] == [(str(root / "test" / "hhhhhhhhhhh_000003_000013"), 0)]  # a frame folder
    messages = [str(w.message) for w in caught]
    missing = [m for m in messages if "not under" in m]
    assert len(missing) == 1  # one warning, for train.csv only
    assert "train.csv: 1 of 5 listed clips" in missing[0] and "gonegonegon_000030_000040" in missing[0]


def test_kinetics_bad_label_names_file_and_line(kinetics_root):
    path = kinetics_root / "annotations" / "validate.csv"
    path.write_text(path.read_text() + csv_row("juggling", "fffffffffff", 2, "val"))  # line 4: not a train label
    with pytest.raises(DataError, match=r"validate\.csv:4: label 'juggling' is not a class of train\.csv"):
        video_splits(kinetics_root)


def test_kinetics_csv_without_any_clip_present_is_refused(kinetics_root):
    (kinetics_root / "annotations" / "validate.csv").write_text(HEADER + csv_row("abseiling", "zzzzzzzzzzz", 5, "val"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"validate\.csv: none of its 1 clips is under"):
            video_splits(kinetics_root)


def test_kinetics_flat_layout_val_csv_and_unlabelled_test(tmp_path):
    """Flat clips beside the CSVs (``val.csv`` naming), a test.csv without labels (withheld): test = val."""
    root = tmp_path / "flat"
    root.mkdir()
    (root / "train.csv").write_text(HEADER + csv_row("b", "x1", 0, "train") + csv_row("a", "x2", 0, "train"))
    (root / "val.csv").write_text(HEADER + csv_row("a", "x3", 0, "val"))
    (root / "test.csv").write_text("youtube_id,time_start,time_end,split\nx4,0,10,test\n")
    for name in ("x1", "x2", "x3", "x4"):
        tiny_mp4(root / f"{name}_000000_000010.mp4")
    with pytest.warns(UserWarning, match="test.csv: has no labels"):
        classes, splits = video_splits(root, list_format="kinetics")
    assert classes == ["a", "b"]
    assert splits["train"] == [(str(root / "x1_000000_000010.mp4"), 1), (str(root / "x2_000000_000010.mp4"), 0)]
    assert splits["test"] == splits["val"] == [(str(root / "x3_000000_000010.mp4"), 0)]


def test_kinetics_clip_in_two_places_prefers_file_then_the_split_folder(kinetics_root):
    name = kinetics_clip_name("eeeeeeeeeee", 1, 11)
    tiny_mp4(kinetics_root / "train" / QUOTED / f"{name}.mp4")  # the val clip also under train/
    frame_folder(kinetics_root / "val" / QUOTED / name)  # and as frame folder beside the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, splits = video_splits(kinetics_root)
    assert splits["val"][0] == (str(kinetics_root / "val" / QUOTED / f"{name}.mp4"), 2)


def test_folder_split_takes_frame_folders_as_videos(tmp_path):
    root = tmp_path / "rawframes"
    frame_folder(root / "jump" / "v_jump_01")
    frame_folder(root / "jump" / "v_jump_02", suffix=".png")
    tiny_mp4(root / "jump" / "v_jump_03.mp4")
    (root / "jump" / "notes").mkdir()  # no images: not a video
    (root / "jump" / "notes" / "readme.txt").write_text("x")
    frame_folder(root / "run" / "v_run_01")
    assert [p.name for p in samples_in(root / "jump")] == ["v_jump_01", "v_jump_02", "v_jump_03.mp4"]
    classes, splits = video_splits(root, val_fraction=0.0, test_fraction=0.0)
    assert classes == ["jump", "run"]
    assert [(Path(p).name, y) for p, y in splits["train"]] == [
        ("v_jump_01", 0), ("v_jump_02", 0), ("v_jump_03.mp4", 0), ("v_run_01", 1)]
    (root / "walk" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match=r"walk: class folder holds no videos .* or frame folders"):
        find_video_classes(root)


def test_ucf101_entries_resolve_to_frame_folders_when_the_file_is_absent(tmp_path):
    root = tmp_path / "ucf"
    frame_folder(root / "Jump" / "v_Jump_g01_c01")
    tiny_mp4(root / "Jump" / "v_Jump_g02_c01.avi")
    frame_folder(root / "Jump" / "v_Jump_g02_c01")  # a file and its frames: the listed file wins
    frame_folder(root / "Run" / "v_Run_g01_c01")
    (root / "classInd.txt").write_text("1 Jump\n2 Run\n")
    (root / "trainlist01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\nJump/v_Jump_g02_c01.avi 1\n")
    (root / "testlist01.txt").write_text("Run/v_Run_g01_c01\n")  # an entry naming the folder itself
    classes, splits = video_splits(root)
    assert classes == ["Jump", "Run"]
    assert splits["train"] == [(str(root / "Jump" / "v_Jump_g01_c01"), 0),
                               (str(root / "Jump" / "v_Jump_g02_c01.avi"), 0)]
    assert splits["test"] == [(str(root / "Run" / "v_Run_g01_c01"), 1)]
    assert resolve_listed(root, "Run/v_Run_g09_c01.avi") is None
    _, folder = video_splits(root, list_format="folder", val_fraction=0.0, test_fraction=0.0)  # lists ignored
    assert [Path(p).name for p, _ in folder["train"]] == ["v_Jump_g01_c01", "v_Jump_g02_c01",
                                                        "v_Jump_g02_c01.avi", "v_Run_g01_c01"]
    (root / "testlist01.txt").write_text("Run/v_Run_g09_c01.avi\n")
    with pytest.raises(DataError, match=r"testlist01\.txt:1: listed video .* does not exist"):
        video_splits(root)


def test_mmaction_rawframe_and_video_lists(tmp_path):
    root = tmp_path / "mm"
    frame_folder(root / "rawframes" / "a" / "v1")
    frame_folder(root / "rawframes" / "b" / "v2")
    tiny_mp4(root / "rawframes" / "b" / "v3.mp4")
    (root / "train_rawframes.txt").write_text("rawframes/a/v1 3 0\nrawframes/b/v2 3 1\n")
    (root / "val_videos.txt").write_text("rawframes/b/v3.mp4 1\n")
    files = {"train": "train_rawframes.txt", "val": "val_videos.txt"}
    classes, splits = video_splits(root, list_format="mmaction", list_files=files)
    assert classes == ["0", "1"]
    assert splits["train"] == [(str(root / "rawframes/a/v1"), 0), (str(root / "rawframes/b/v2"), 1)]
    assert splits["test"] == splits["val"] == [(str(root / "rawframes/b/v3.mp4"), 1)]
    (root / "val_videos.txt").write_text("rawframes/b/v3.mp4 one\n")
    with pytest.raises(DataError, match=r"val_videos\.txt:1: expected"):
        video_splits(root, list_format="mmaction", list_files=files)


def test_datamodule_list_format_option(tmp_path, kinetics_root):
    # a classInd.txt beside Kinetics CSVs: auto keeps UCF101 first, kinetics and folder are explicit
    (kinetics_root / "classInd.txt").write_text("1 abseiling\n")
    with pytest.raises(DataError, match=r"trainlist01\.txt: split list not found"):
        VideoFolderDataModule(str(kinetics_root)).setup("fit")
    dm = VideoFolderDataModule(str(kinetics_root), list_format="kinetics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("validate")
    assert dm.class_names == ["abseiling", "air drumming", QUOTED] and len(dm.val_set) == 2
    with pytest.raises(ConfigError, match="data.init_args.list_format must be one of"):
        VideoFolderDataModule(str(kinetics_root), list_format="kinetics700")
    with pytest.raises(DataError, match="list_format 'ucf101' but no classInd.txt"):
        VideoFolderDataModule(str(tmp_path), list_format="ucf101").setup("fit")


def test_datamodule_serves_clips_of_frame_folders_end_to_end(tmp_path):
    """Folder split over frame folders through ``FrameStore``: every view's frames are the PNGs the clip's
    start and length name (frame f of video v has the value 20 * v + 10 * f, lossless)."""
    root = tmp_path / "frames"
    for v in range(4):
        folder = root / ("a" if v < 2 else "b") / f"video_{v}"
        folder.mkdir(parents=True)
        for f in range(8):
            Image.fromarray(np.full((12, 16, 3), 20 * v + 10 * f, np.uint8)).save(folder / f"img_{f + 1:05d}.png")
    dm = VideoFolderDataModule(str(root), clip_len=4, clips_per_video=2, batch_size=2, resize=None, crop_size=12,
                               train_transforms="none", mean=(0, 0, 0), std=(1, 1, 1), val_fraction=0.5,
                               test_fraction=0.0)
    dm.setup("fit")
    assert dm.class_names == ["a", "b"] and len(dm.train_set) == 2 and len(dm.val_set) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["video"].shape == (2, 2, 3, 4, 12, 16)  # (videos, clips, C, T, H, W)
    for video, path, starts in zip(batch["video"], batch["path"], batch["starts"]):
        v = int(Path(path).name.split("_")[1])
        assert starts.tolist() == [0, 4]  # uniform starts over 8 frames for a 4-frame span
        expected = 20 * v + 10 * (starts[:, None] + torch.arange(4)[None])  # (clips, T)
        torch.testing.assert_close(video.mul(255).round()[:, 0, :, 0, 0], expected.float())
    train = next(iter(dm.train_dataloader()))
    assert train["video"].shape == (2, 3, 4, 12, 16) and train["label"].tolist() in ([0, 1], [1, 0])


def test_predict_root_flat_frame_folders_are_videos_not_classes(tmp_path):
    train = tmp_path / "train"
    frame_folder(train / "a" / "v0")
    frame_folder(train / "b" / "v1")
    flat = tmp_path / "flat"
    frame_folder(flat / "clip_1")
    tiny_mp4(flat / "clip_2.mp4")
    dm = VideoFolderDataModule(str(train), predict_root=str(flat), val_fraction=0.0, test_fraction=0.0)
    dm.setup("predict")
    assert dm.predict_set.samples == [(str(flat / "clip_1"), -1), (str(flat / "clip_2.mp4"), -1)]
    by_class = tmp_path / "by_class"
    frame_folder(by_class / "b" / "clip_3")
    frame_folder(by_class / "c" / "clip_4")  # a class the model does not know: label -1
    dm = VideoFolderDataModule(str(train), predict_root=str(by_class), val_fraction=0.0, test_fraction=0.0)
    dm.setup("predict")
    assert dm.predict_set.samples == [(str(by_class / "b" / "clip_3"), 1), (str(by_class / "c" / "clip_4"), -1)]


def test_a_space_separated_train_csv_is_refused_with_a_hint(tmp_path):
    (tmp_path / "train.csv").write_text("a/v1.mp4 0\n")  # SlowFast's "<path> <label>" list, not Kinetics'
    (tmp_path / "val.csv").write_text("a/v2.mp4 0\n")
    with pytest.raises(DataError, match=r"train\.csv: a Kinetics CSV needs the columns .* use list_format 'mmaction'"):
        video_splits(tmp_path)
