"""Depth, surface-normal and semantic-labelling metrics, as Eigen & Fergus report them (Tables 1-3, S3 L4480-4579).

Each family is a ``torchmetrics.MetricCollection`` of scalar metrics, so ``compute()`` returns a dict keyed
as below and Lightning can log every entry as a Metric object (computed once per epoch, synced across DDP
ranks by summing the states). ``update`` does the shared work once per batch and feeds each member.

* ``DepthMetrics``: computed per image, then averaged over images (the NYU protocol of Eigen et al. 2014).
* ``NormalMetrics``: over all valid pixels of the dataset (the protocol of Fouhey et al. that the paper uses).
* ``SemanticMetrics``: from the dataset-wide confusion counts, with FCN's definitions (``semantic_scores``).

A metric that saw no valid pixel in the whole epoch is ``UNDEFINED`` (-1, COCO's and detection's "undefined"),
never NaN: every value here is >= 0, so -1 cannot be mistaken for a result, and NaN would break loggers,
checkpoint monitors and early stopping.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.aggregation import MeanMetric
from torchmetrics.utilities import dim_zero_cat

from ..constants import IGNORE_LABEL
from ..losses.dense import valid_depth_mask, valid_normals_mask
from .detection import UNDEFINED
from .tables import mean_row, table_csv, table_markdown

DEPTH_KEYS = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
NORMAL_KEYS = ("mean", "median", "rmse", "within_11_25", "within_22_5", "within_30")
SEMANTIC_KEYS = ("pixel_acc", "mean_acc", "miou", "fwiou")
NORMAL_THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}

# Eigen et al. 2014's evaluation crop of the 640x480 NYU frames (rows 45:471, columns 41:601): the border
# where the Kinect depth was filled in / the colour camera has no valid image.
EIGEN_CROP_480x640 = (45, 471, 41, 601)


#: the whole 480x640 NYU frame as (top, bottom, left, right)
NYU_FRAME_480x640 = (0, 480, 0, 640)


def eigen_crop_mask(height: int, width: int, device=None,
                    window: Sequence[float] = NYU_FRAME_480x640) -> Tensor:
    """The Eigen crop as a boolean (H, W) mask for a map that covers ``window`` = (top, bottom, left, right)
    of the 480x640 frame, in frame pixels (default: the whole frame, i.e. the crop scaled proportionally).

    A centre-cropped evaluation map (``eval_crop``: 228x304 out of 240x320 covers frame rows 12:468 and
    columns 16:624) has the crop shifted by the window's corner before scaling, so the mask lands on the same
    frame pixels as rows 45:471, columns 41:601 of the full frame."""
    top, bottom, left, right = EIGEN_CROP_480x640
    w_top, w_bottom, w_left, w_right = (float(v) for v in window)
    sy, sx = height / (w_bottom - w_top), width / (w_right - w_left)

    def span(start: float, stop: float, origin: float, scale: float, size: int) -> slice:
        return slice(min(max(round((start - origin) * scale), 0), size), min(max(round((stop - origin) * scale), 0), size))

    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[span(top, bottom, w_top, sy, height), span(left, right, w_left, sx, width)] = True
    return mask


#: the depth evaluation crops by name: ``none``, NYU's Eigen crop, and the two KITTI crops
DEPTH_CROPS = ("none", "nyu_eigen", "kitti_garg", "kitti_eigen")
#: the KITTI crops as (top, bottom, left, right) fractions of the ground truth's height and width, exactly as the
#: reference evaluation code writes them: ``garg`` (Garg et al. 2016; monodepth2 ``evaluate_depth.py``, BTS
#: ``--garg_crop``) and ``eigen`` (Eigen et al. 2014; BTS ``--eigen_crop`` for KITTI). The bounds are truncated to
#: integers (numpy ``astype(np.int32)`` / Python ``int``), e.g. rows 153:371, columns 44:1197 of a 375x1242 frame
#: for ``garg``.
KITTI_CROP_FRACTIONS = {"kitti_garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
                        "kitti_eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229)}


def kitti_crop_box(crop: str, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a KITTI crop (``kitti_garg`` or ``kitti_eigen``) on a ``height`` x
    ``width`` ground-truth map, truncated to pixels as monodepth2 and BTS do."""
    top, bottom, left, right = KITTI_CROP_FRACTIONS[crop]
    return int(top * height), int(bottom * height), int(left * width), int(right * width)


def depth_crop_mask(crop: str, height: int, width: int, device=None) -> Tensor | None:
    """The evaluation crop ``crop`` (one of ``DEPTH_CROPS``) as a boolean (H, W) mask of a ground-truth map
    (None for ``none``): ``nyu_eigen`` is ``eigen_crop_mask`` (scaled to the map), the KITTI crops are fractions
    of the map's size (``KITTI_CROP_FRACTIONS``)."""
    if crop not in DEPTH_CROPS:
        raise ValueError(f"depth evaluation crop {crop!r} is not one of {', '.join(DEPTH_CROPS)}")
    if crop == "none":
        return None
    if crop == "nyu_eigen":
        return eigen_crop_mask(height, width, device=device)
    top, bottom, left, right = kitti_crop_box(crop, height, width)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[top:bottom, left:right] = True
    return mask


def median_scaling_ratios(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per image ``median(gt) / median(pred)`` over its valid pixels (monodepth2's ``evaluate_depth.py``: the
    scale a monocular, scale-ambiguous prediction is multiplied by before scoring; Zhou et al. 2017). The
    median of an even count is the mean of the two middle values, as ``np.median``; an image without valid
    pixels gets 1."""
    ratios = torch.ones(len(pred), dtype=torch.float64, device=pred.device)
    for i in range(len(pred)):
        if bool(valid[i].any()):
            gt = torch.quantile(target[i][valid[i]].double(), 0.5)
            pr = torch.quantile(pred[i][valid[i]].double(), 0.5)
            ratios[i] = gt / pr.clamp(min=1e-12)
    return ratios


def _squeeze(x: Tensor) -> Tensor:
    return x[:, 0] if x.dim() == 4 else x


def depth_errors(pred: Tensor, target: Tensor, mask: Tensor | None = None, *, min_depth: float = 1e-3,
                 max_depth: float | None = None, eigen_crop: bool = False,
                 silog_lambda: float = 1.0, crop: str = "none",
                 median_scaling: bool = False) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image depth errors over valid pixels.

    Returns ``(errors, has_pixels)``: ``errors[key]`` holds one value per image with at least one valid pixel
    (``has_pixels`` marks which), so images without valid ground truth are skipped rather than producing NaN
    (``DepthMetrics`` is ``UNDEFINED``, -1, when no image of the epoch had any).
    A pixel is valid where the ground truth is finite and strictly between ``min_depth`` and ``max_depth`` (the
    depth cap, 10 m for NYU, 80 m for KITTI; strict on both sides as in BTS's and monodepth2's evaluation:
    ``gt > min`` and ``gt < max``, which matters for KITTI's PNGs, where 80 m is the exact value 20480 / 256),
    inside the evaluation ``crop`` (``DEPTH_CROPS``; ``eigen_crop=True`` is
    ``crop="nyu_eigen"``), and inside ``mask``. With ``median_scaling`` each prediction is first multiplied by
    ``median(gt) / median(pred)`` over its valid pixels (``median_scaling_ratios``; the ratios come back as
    ``errors["scale_ratio"]``). Predictions are then clamped to ``[min_depth, max_depth]`` as in the reference
    evaluation code (monodepth2, BTS).
    """
    if eigen_crop:
        if crop not in ("none", "nyu_eigen"):
            raise ValueError(f"depth metrics: eigen_crop=True (NYU's crop) conflicts with crop={crop!r}")
        crop = "nyu_eigen"
    pred, target = _squeeze(pred).float(), _squeeze(target).float()
    if pred.shape != target.shape:
        raise ValueError(f"depth metrics: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = valid_depth_mask(target, None if mask is None else _squeeze(mask)) & (target > min_depth)
    if max_depth is not None:
        valid &= target < max_depth
    crop_mask = depth_crop_mask(crop, *target.shape[-2:], device=target.device)
    if crop_mask is not None:
        valid &= crop_mask
    pred = torch.nan_to_num(pred, nan=min_depth, posinf=max_depth or 1e6)
    ratios = None
    if median_scaling:
        ratios = median_scaling_ratios(pred, target, valid)
        pred = pred * ratios.to(pred.dtype)[:, None, None]
    pred = pred.clamp(min=min_depth, max=max_depth)
    gt = torch.where(valid, target, torch.ones_like(target))
    pr = torch.where(valid, pred, torch.ones_like(pred))
    n = valid.flatten(1).sum(1).float()
    has = n > 0
    n_safe = n.clamp(min=1)

    def mean(x: Tensor) -> Tensor:
        return (x * valid).flatten(1).sum(1) / n_safe

    ratio = torch.maximum(pr / gt, gt / pr)
    diff = pr - gt
    log_diff = torch.log(pr) - torch.log(gt)
    errors = {f"delta{k}": mean((ratio < 1.25 ** k).float()) for k in (1, 2, 3)}
    errors["abs_rel"] = mean(diff.abs() / gt)
    errors["sq_rel"] = mean(diff ** 2 / gt)
    errors["rmse"] = mean(diff ** 2).sqrt()
    errors["rmse_log"] = mean(log_diff ** 2).sqrt()
    errors["log10"] = mean((torch.log10(pr) - torch.log10(gt)).abs())
    errors["silog"] = (mean(log_diff ** 2) - silog_lambda * mean(log_diff) ** 2).clamp(min=0).sqrt()
    if ratios is not None:
        errors["scale_ratio"] = ratios
    return {k: v[has] for k, v in errors.items()}, has


class _Mean(MeanMetric):
    """A mean that is ``UNDEFINED`` (-1), not NaN, when nothing was averaged (no valid pixel or image)."""

    def compute(self) -> Tensor:
        if self.weight == 0:
            return torch.tensor(UNDEFINED)
        return super().compute()


class _RootMean(_Mean):
    """sqrt of a mean (an RMSE accumulated as the mean of squares)."""

    def compute(self) -> Tensor:
        value = super().compute()
        return value if self.weight == 0 else value.sqrt()


class _ScaleRatioStat(Metric):
    """The median or the standard deviation (population, numpy's default) of the per-image median-scaling ratios
    of the epoch, over every DDP rank: what monodepth2 prints as "Scaling ratios | med | std". A ratio std well
    above 0 says the model's scale varies from image to image."""

    full_state_update = False

    def __init__(self, stat: str, **kwargs):
        super().__init__(**kwargs)
        if stat not in ("median", "std"):
            raise ValueError(f"stat must be median or std, got {stat!r}")
        self.stat = stat
        self.add_state("ratios", [], dist_reduce_fx="cat")

    def update(self, ratios: Tensor) -> None:
        self.ratios.append(ratios.double().flatten())

    def compute(self) -> Tensor:
        values = dim_zero_cat(self.ratios) if len(self.ratios) else torch.zeros(0, dtype=torch.float64)
        if values.numel() == 0:
            return torch.tensor(UNDEFINED)
        value = torch.quantile(values, 0.5) if self.stat == "median" else values.std(unbiased=False)
        return value.float()


#: the members ``median_scaling`` adds to ``DepthMetrics``, each fed the per-image ratios
SCALE_RATIO_KEYS = ("scale_ratio_median", "scale_ratio_std")


class DepthMetrics(MetricCollection):
    """Depth accuracy (Eigen et al. 2014, Sec. 4.1; Table 1 of 1411.4734), per image then averaged over images.

    Keys (``d_i = log p_i - log g_i`` over the image's n valid pixels, natural log, depths in metres):
      * ``delta1/2/3``: fraction of pixels with ``max(p/g, g/p) < 1.25^k``;
      * ``abs_rel``: mean ``|p - g| / g``;  ``sq_rel``: mean ``(p - g)^2 / g`` (divided by g, not g^2);
      * ``rmse``: ``sqrt(mean (p - g)^2)`` in metres;  ``rmse_log``: ``sqrt(mean d^2)``;
      * ``log10``: mean ``|log10 p - log10 g|``;
      * ``silog``: the scale-invariant error ``sqrt((1/n) sum d^2 - (lambda/n^2) (sum d)^2)`` with
        ``lambda = silog_lambda`` = 1 by default (Eigen et al. 2014's "sc-inv." column) and scale 1, i.e.
        in log units, not multiplied by 100 as KITTI's SILog is.
    Every key is ``UNDEFINED`` (-1) when no image had a valid pixel. With ``median_scaling`` two more keys,
    ``scale_ratio_median`` and ``scale_ratio_std``, report the per-image scaling ratios (``_ScaleRatioStat``).

    Args:
        min_depth, max_depth: valid ground-truth range and the clamp for predictions (NYU: 1e-3 and 10 m;
            KITTI: 1e-3 and 80 m, or 50 m).
        eigen_crop: evaluate only inside Eigen's crop (rows 45:471, cols 41:601 of a 480x640 frame); the same
            as ``crop="nyu_eigen"``.
        crop: the evaluation crop by name, one of ``DEPTH_CROPS`` (``none``, ``nyu_eigen``, ``kitti_garg``,
            ``kitti_eigen``; ``depth_crop_mask``).
        median_scaling: scale each prediction by ``median(gt) / median(pred)`` first (monocular models).
    """

    def __init__(self, *, min_depth: float = 1e-3, max_depth: float | None = None, eigen_crop: bool = False,
                 silog_lambda: float = 1.0, crop: str = "none", median_scaling: bool = False,
                 prefix: str | None = None):
        if crop not in DEPTH_CROPS:
            raise ValueError(f"DepthMetrics: crop {crop!r} is not one of {', '.join(DEPTH_CROPS)}")
        members: dict[str, Metric] = {k: _Mean() for k in DEPTH_KEYS}
        if median_scaling:
            members.update({key: _ScaleRatioStat(key.rsplit("_", 1)[1]) for key in SCALE_RATIO_KEYS})
        super().__init__(members, prefix=prefix, compute_groups=False)
        self.options = dict(min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop,
                            silog_lambda=silog_lambda, crop=crop, median_scaling=median_scaling)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:  # type: ignore[override]
        """``pred`` and ``target`` are depths (not log) in metres, (N, H, W) or (N, 1, H, W)."""
        self.update_members(dict(self.items(keep_base=True, copy_state=False)), pred, target, mask, **self.options)

    @staticmethod
    def update_members(members: dict[str, Metric], pred: Tensor, target: Tensor, mask: Tensor | None = None,
                       **options) -> None:
        """Feed members keyed as ``DEPTH_KEYS`` (also when they sit, flattened, in a task's collection), and
        ``SCALE_RATIO_KEYS`` the per-image ratios when ``median_scaling`` is on."""
        errors, _ = depth_errors(pred, target, mask, **options)
        for key, metric in members.items():
            values = errors.get("scale_ratio" if key in SCALE_RATIO_KEYS else key)
            if values is not None and len(values):
                metric.update(values)


def angular_error_degrees(pred: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees between (N, 3, H, W) normal maps (both normalised here), per pixel (N, H, W)."""
    pred = torch.nn.functional.normalize(pred.float(), dim=1, eps=1e-12)
    target = torch.nn.functional.normalize(target.float(), dim=1, eps=1e-12)
    return torch.rad2deg(torch.acos((pred * target).sum(1).clamp(-1.0, 1.0)))


class _HistogramMedian(Metric):
    """Median of angles in [0, 180] degrees from a fine histogram whose counts are summed across DDP ranks.

    Storing every pixel's angle (654 NYU test images are 200 M pixels) is not practical; with
    ``bins_per_degree`` = 100 the result is within 0.005 degrees of the exact median of all pixels
    (linear interpolation inside the median's bin).
    """

    full_state_update = False

    def __init__(self, bins_per_degree: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.bins_per_degree = bins_per_degree
        self.add_state("hist", torch.zeros(180 * bins_per_degree, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, angles: Tensor) -> None:
        index = (angles.double() * self.bins_per_degree).long().clamp(0, self.hist.numel() - 1)
        self.hist += torch.bincount(index, minlength=self.hist.numel()).to(self.hist)

    def compute(self) -> Tensor:
        total = self.hist.sum()
        if total == 0:
            return torch.tensor(UNDEFINED)
        cumulative = self.hist.cumsum(0)
        half = total / 2
        b = int(torch.searchsorted(cumulative, half))
        before = cumulative[b - 1] if b > 0 else torch.zeros((), dtype=cumulative.dtype)
        fraction = (half - before) / self.hist[b]
        return ((b + fraction) / self.bins_per_degree).float()


class NormalMetrics(MetricCollection):
    """Surface-normal accuracy (Fouhey et al.'s protocol, Table 2 of 1411.4734), in degrees, over all valid
    pixels of the dataset: ``mean``, ``median``, ``rmse`` of the angle to the ground truth and the fraction
    of pixels ``within_11_25`` / ``within_22_5`` / ``within_30`` degrees. A pixel is valid where the
    ground-truth normal is finite and non-zero and ``mask`` allows. The median comes from a 0.01-degree
    histogram (exact to 0.005 degrees; see ``_HistogramMedian``). Every key is ``UNDEFINED`` (-1) when no
    pixel was valid."""

    def __init__(self, *, bins_per_degree: int = 100, prefix: str | None = None):
        members: dict[str, Metric] = {"mean": _Mean(), "median": _HistogramMedian(bins_per_degree),
                                      "rmse": _RootMean()}
        members.update({k: _Mean() for k in NORMAL_THRESHOLDS})
        super().__init__(members, prefix=prefix, compute_groups=False)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:  # type: ignore[override]
        """``pred`` and ``target``: (N, 3, H, W) normal maps; ``pred`` need not be unit length."""
        self.update_members(dict(self.items(keep_base=True, copy_state=False)), pred, target, mask)

    @staticmethod
    def update_members(metrics: dict[str, Metric], pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Feed members keyed as ``NORMAL_KEYS``."""
        valid = valid_normals_mask(target, mask) & torch.isfinite(pred).all(1)
        angles = angular_error_degrees(torch.nan_to_num(pred), torch.nan_to_num(target))[valid]
        if angles.numel() == 0:
            return
        metrics["mean"].update(angles)
        metrics["median"].update(angles)
        metrics["rmse"].update(angles ** 2)
        for key, threshold in NORMAL_THRESHOLDS.items():
            metrics[key].update((angles < threshold).float())


def confusion_counts(labels: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_LABEL) -> Tensor:
    """(C, C) int64 pixel counts, rows the true class and columns the predicted one, over pixels whose target
    is not ``ignore_index`` (FCN's ``fast_hist``)."""
    keep = target != ignore_index
    index = target[keep].long() * num_classes + labels[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def semantic_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Long et al.'s ``label_accuracy_score`` (FCN, CVPR 2015, Sec. 5 "Metrics"; ``score.py``) from a (C, C)
    confusion matrix (rows true): ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou`` and the per-class
    ``acc_per_class`` / ``iou_per_class``.

    A class absent from the ground truth has no accuracy (0/0) and is left out of ``mean_acc``, as FCN's
    ``nanmean`` does; its IoU is 0 when it was predicted (it counts in ``miou``) and undefined when it was not.
    Undefined per-class values are NaN; scalars over an empty matrix are ``UNDEFINED`` (-1, as detection).
    """
    hist = confusion.double()
    total = hist.sum()
    if total == 0:
        nan = torch.full((len(hist),), float("nan"), dtype=torch.float64)
        return {**{k: torch.tensor(UNDEFINED) for k in SEMANTIC_KEYS}, "acc_per_class": nan, "iou_per_class": nan}
    diag, gt, pred = hist.diag(), hist.sum(1), hist.sum(0)
    acc = diag / gt  # NaN where the class never occurs in the ground truth
    iou = diag / (gt + pred - diag)  # NaN where it occurs in neither
    freq = gt / total
    return {"pixel_acc": (diag.sum() / total).float(), "mean_acc": acc.nanmean().float(),
            "miou": iou.nanmean().float(), "fwiou": (freq[freq > 0] * iou[freq > 0]).sum().float(),
            "acc_per_class": acc, "iou_per_class": iou}


class _SemanticScore(Metric):
    """One of ``SEMANTIC_KEYS`` from a dataset-wide confusion matrix (summed across DDP ranks)."""

    full_state_update = False

    def __init__(self, key: str, num_classes: int, ignore_index: int = IGNORE_LABEL, **kwargs):
        super().__init__(**kwargs)
        self.key, self.num_classes, self.ignore_index = key, num_classes, ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: Tensor) -> None:
        """Add one batch's ``confusion_counts`` (computed once for all four members)."""
        self.confusion += counts.to(self.confusion)

    def compute(self) -> Tensor:
        return semantic_scores(self.confusion)[self.key]


class SemanticMetrics(MetricCollection):
    """Semantic labelling (Table 3 of 1411.4734) with FCN's definitions (``semantic_scores``): ``pixel_acc``
    (pixelwise accuracy), ``mean_acc`` (mean of per-class accuracies over the classes present in the ground
    truth), ``miou`` (flat mean Jaccard index) and ``fwiou`` (Jaccard index weighted by each class's pixel
    frequency in the ground truth), all from dataset-wide confusion counts. Pixels labelled ``ignore_index``
    (255) or outside ``mask`` do not count; every value is -1 (undefined) when no pixel was labelled."""

    def __init__(self, num_classes: int, *, ignore_index: int = IGNORE_LABEL, prefix: str | None = None):
        super().__init__({k: _SemanticScore(k, num_classes, ignore_index) for k in SEMANTIC_KEYS},
                         prefix=prefix, compute_groups=False)
        self.ignore_index = ignore_index

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:  # type: ignore[override]
        """``pred``: (N, C, H, W) scores or (N, H, W) labels; ``target``: (N, H, W) labels."""
        self.update_members(dict(self.items(keep_base=True, copy_state=False)), pred, target, mask,
                            ignore_index=self.ignore_index)

    @staticmethod
    def update_members(members: dict[str, Metric], pred: Tensor, target: Tensor, mask: Tensor | None = None, *,
                       ignore_index: int = IGNORE_LABEL) -> None:
        """Feed members keyed as ``SEMANTIC_KEYS``."""
        labels = pred.argmax(1) if pred.dim() == 4 else pred
        target = target.long()
        if mask is not None:
            target = torch.where(mask.bool(), target, torch.full_like(target, ignore_index))
        num_classes = next(iter(members.values())).num_classes
        counts = confusion_counts(labels, target, num_classes, ignore_index)  # one pass over the pixels
        for metric in members.values():
            metric.update(counts)

    @staticmethod
    def synced_confusion(members: dict[str, Metric]) -> Tensor:
        """The dataset-wide confusion matrix behind the members' values (summed over DDP ranks; every rank
        must call this)."""
        metric = members["miou"]
        with metric.sync_context():
            return metric.confusion.clone().cpu()

    @staticmethod
    def per_class_table(confusion: Tensor, class_names: Sequence[str]) -> list[dict]:
        """One row per class: ``class``, ``iou``, ``acc`` (None where undefined), ``gt_pixels`` and
        ``pred_pixels``; the values ``semantic_scores`` averages into ``miou`` and ``mean_acc``."""
        scores = semantic_scores(confusion)

        def defined(value: Tensor) -> float | None:
            return None if torch.isnan(value) else float(value)

        return [{"class": name, "iou": defined(scores["iou_per_class"][c]), "acc": defined(scores["acc_per_class"][c]),
                 "gt_pixels": int(confusion[c].sum()), "pred_pixels": int(confusion[:, c].sum())}
                for c, name in enumerate(class_names)]


PER_CLASS_COLUMNS = (("class", "class"), ("iou", "IoU"), ("acc", "accuracy"), ("gt_pixels", "true pixels"),
                     ("pred_pixels", "predicted pixels"))


def per_class_csv(rows: Sequence[dict]) -> str:
    """The per-class table as CSV (full precision; an empty cell where a value is undefined)."""
    return table_csv(rows, PER_CLASS_COLUMNS)


def per_class_markdown(rows: Sequence[dict], means: dict[str, float] | None = None) -> str:
    """The per-class table as markdown, with a "mean" row holding ``means`` (the metric's own ``miou`` and
    ``mean_acc`` under ``iou``/``acc``) when given."""
    total = None if means is None else mean_row(rows, means, ("gt_pixels", "pred_pixels"))
    return table_markdown(rows, PER_CLASS_COLUMNS, total)
