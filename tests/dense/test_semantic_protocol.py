"""Semantic labelling protocol: FCN's scores, median-frequency class weights, and the per-class test report."""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from densecnn.data.dense import DenseFolderDataset
from densecnn.data.synthetic.dense import write_dense_dataset
from densecnn.losses.dense import median_frequency_weights, semantic_loss
from densecnn.metrics import SemanticMetrics
from tasks import DensePredictionTask
from tasks.datamodules.dense import DenseDataModule
from tasks.dense import stored_label_maps

SMALL_HEAD = dict(coarse_pool=[2, 3], coarse_hidden=16, coarse_channels=4, coarse_size=[3, 4],
                  scale2_image_channels=8, scale2_widths=[8], scale3_image_channels=8, scale3_widths=[8])


# ---- the oracle: FCN's score.py (Long et al. 2015), written out with numpy ------------------------------------
def fcn_fast_hist(a, b, n):
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


def fcn_label_accuracy_score(label_trues, label_preds, n_class):
    hist = np.zeros((n_class, n_class))
    for lt, lp in zip(label_trues, label_preds):
        hist += fcn_fast_hist(lt.flatten(), lp.flatten(), n_class)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return acc, acc_cls, mean_iu, fwavacc


def test_mean_acc_skips_classes_absent_from_the_ground_truth_like_fcn():
    # class 2 is predicted once but never true: FCN's nanmean leaves it out -> (1 + 1/2) / 2 = 0.75
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 0, 1, 2]]])
    m = SemanticMetrics(3)
    m.update(pred, target)
    out = m.compute()
    assert float(out["mean_acc"]) == pytest.approx(0.75)
    acc, acc_cls, mean_iu, fwavacc = fcn_label_accuracy_score([target.numpy()], [pred.numpy()], 3)
    assert (float(out["pixel_acc"]), float(out["mean_acc"]), float(out["miou"]), float(out["fwiou"])) == \
        pytest.approx((acc, acc_cls, mean_iu, fwavacc))


def test_semantic_metrics_equal_fcn_label_accuracy_score_over_batches_with_ignored_pixels():
    g = torch.Generator().manual_seed(3)
    n_class = 6
    trues, preds = [], []
    m = SemanticMetrics(n_class)
    for _ in range(3):
        target = torch.randint(0, n_class - 1, (2, 9, 11), generator=g)  # the last class never occurs
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=n_class - 1),
                           torch.randint(0, n_class, target.shape, generator=g))
        m.update(torch.nn.functional.one_hot(pred, n_class).permute(0, 3, 1, 2).float(), target)
        trues.append(target.numpy())  # 255 falls outside [0, n) and is dropped by fast_hist, as in FCN
        preds.append(pred.numpy())
    out = m.compute()
    expected = fcn_label_accuracy_score(trues, preds, n_class)
    got = tuple(float(out[k]) for k in ("pixel_acc", "mean_acc", "miou", "fwiou"))
    assert got == pytest.approx(expected, abs=1e-6)


# ---- median-frequency weights -------------------------------------------------------------------------------------
def hand_median_frequency(maps, n_class):
    """w_c = median_c(freq) / freq_c; freq_c = pixels of c / labelled pixels of the images containing c."""
    pixels, image_pixels = [0] * n_class, [0] * n_class
    for labels in maps:
        labelled = [int(v) for v in np.asarray(labels).flatten() if v != 255]
        for c in set(labelled):
            pixels[c] += labelled.count(c)
            image_pixels[c] += len(labelled)
    freq = {c: pixels[c] / image_pixels[c] for c in range(n_class) if image_pixels[c]}
    median = statistics.median(freq.values())
    return [median / freq[c] if c in freq else 1.0 for c in range(n_class)]


def test_median_frequency_weights_by_hand():
    maps = [np.array([[0, 0, 0, 1]]), np.array([[0, 2, 2, 255]]), np.array([[1, 1, 255, 255]])]
    # freq0 = 4/(4+3) = 4/7; freq1 = (1+2)/(4+2) = 1/2; freq2 = 2/3; class 3 absent; median = 4/7
    expected = [1.0, (4 / 7) / (1 / 2), (4 / 7) / (2 / 3), 1.0]
    weights = median_frequency_weights(maps, 4)
    torch.testing.assert_close(weights, torch.tensor(expected))
    torch.testing.assert_close(weights, torch.tensor(hand_median_frequency(maps, 4), dtype=torch.float32))
    with pytest.raises(ValueError, match="label map 1"):
        median_frequency_weights([np.array([[0]]), np.array([[7]])], 4)


def test_weighted_semantic_loss_is_the_class_weighted_mean_of_pixel_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 3, 2, 3), torch.tensor([[[0, 1, 2], [2, 255, 0]]])
    weight = torch.tensor([0.5, 2.0, 1.0])
    nll = -logits.log_softmax(1)
    terms = [(weight[c], nll[0, c, i, j]) for (i, j), c in np.ndenumerate(labels[0].numpy()) if c != 255]
    expected = sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    torch.testing.assert_close(semantic_loss(logits, labels, weight=weight), expected)


# ---- fit: weights from the label files, in the checkpoint; test: the per-class report ---------------------------
@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms")
    write_dense_dataset(root, height=24, width=32, splits={"train": 4, "val": 2, "test": 2})
    return root


def test_stored_label_maps_read_the_label_files_unaugmented(rooms):
    dataset = DenseFolderDataset(rooms / "train")
    files = sorted((rooms / "train" / "labels").glob("*.png"))
    for labels, path in zip(stored_label_maps(dataset), files, strict=True):
        np.testing.assert_array_equal(labels, np.asarray(Image.open(path)))


def test_fit_computes_median_frequency_weights_and_test_writes_the_per_class_report(rooms, tmp_path):
    pl.seed_everything(0)
    task = DensePredictionTask(backbone="cifar_resnet20", targets=["semantic"], num_classes=5, **SMALL_HEAD,
                               semantic_class_weights="median_frequency")
    data = DenseDataModule(str(rooms), batch_size=2, image_size=(24, 32), num_classes=5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", limit_train_batches=1, limit_val_batches=1,
                         enable_progress_bar=False, default_root_dir=str(tmp_path),
                         logger=pl.loggers.CSVLogger(str(tmp_path)))
    trainer.fit(task, datamodule=data)
    maps = [np.asarray(Image.open(p)) for p in sorted((rooms / "train" / "labels").glob("*.png"))]
    expected = torch.tensor(hand_median_frequency(maps, 5), dtype=torch.float32)
    torch.testing.assert_close(task.class_weights, expected)
    assert not torch.allclose(expected, torch.ones(5))  # the synthetic rooms are unbalanced
    ckpt = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.testing.assert_close(state["class_weights"], expected)
    restored = DensePredictionTask.load_from_checkpoint(ckpt)
    torch.testing.assert_close(restored.class_weights, expected)

    result = trainer.test(task, datamodule=data)[0]
    run = trainer.log_dir
    with open(f"{run}/test_semantic_per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["floor", "ceiling", "wall", "box", "sphere"]
    with open(f"{run}/test_confusion_matrix.csv") as f:
        hist = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]], dtype=float)
    # the table's values are the metric's own: FCN's formulas on the written confusion matrix ...
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        acc = np.diag(hist) / hist.sum(1)
    for r, i, a in zip(rows, iou, acc):
        assert (r["iou"] == "" if math.isnan(i) else float(r["iou"]) == pytest.approx(i))
        assert (r["acc"] == "" if math.isnan(a) else float(r["acc"]) == pytest.approx(a))
    # ... whose means are the logged test/semantic/miou and mean_acc, and whose counts are the test pixels
    assert result["test/semantic/miou"] == pytest.approx(float(np.nanmean(iou)), abs=1e-6)
    assert result["test/semantic/mean_acc"] == pytest.approx(float(np.nanmean(acc)), abs=1e-6)
    assert hist.sum() == sum(int((np.asarray(Image.open(p)) != 255).sum())
                             for p in (rooms / "test" / "labels").glob("*.png"))
    markdown = Path(run, "test_semantic_per_class.md").read_text().splitlines()
    assert markdown[-1].startswith("| **mean** | " + f"{result['test/semantic/miou']:.4f}")
    pictures = list(Path(run, "pictures").glob("test_confusion_matrix_epoch*.png"))
    assert len(pictures) == 1 and np.asarray(Image.open(pictures[0])).shape[0] > 5 * 36  # 5 rows of 36 px cells


def test_semantic_class_weights_is_checked():
    from densecnn.errors import ConfigError

    with pytest.raises(ConfigError, match="semantic_class_weights"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["semantic"], num_classes=5, **SMALL_HEAD,
                            semantic_class_weights="inverse")
    with pytest.raises(ConfigError, match="needs the semantic target"):
        DensePredictionTask(backbone="cifar_resnet20", targets=["depth"], **SMALL_HEAD,
                            semantic_class_weights="median_frequency")


def test_the_four_semantic_scores_count_the_pixels_once_per_batch(monkeypatch):
    """pixel_acc, mean_acc, miou and fwiou share one confusion count per batch (the bincount over every pixel is
    the costly part), and still give FCN's values."""
    from densecnn.metrics import dense

    calls = []
    original = dense.confusion_counts
    monkeypatch.setattr(dense, "confusion_counts", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    metrics = dense.SemanticMetrics(3)
    metrics.update(torch.tensor([[0, 0, 1, 2]]), torch.tensor([[0, 0, 1, 1]]))
    assert len(calls) == 1
    values = metrics.compute()
    assert float(values["pixel_acc"]) == 0.75 and float(values["mean_acc"]) == 0.75
