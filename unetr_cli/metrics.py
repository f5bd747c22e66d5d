"""Per-organ overlap and distance metrics, computed from label maps.

Dice comes from one confusion count over all classes (`np.bincount`), the same numbers MONAI's DiceMetric
gives on one-hot tensors but without building 14 one-hot channels of a whole volume.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def overlap_counts(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """(num_classes, 3) array of [intersection, predicted voxels, true voxels] per class."""
    pred = _as_numpy(pred).astype(np.int64, copy=False).ravel()
    truth = _as_numpy(truth).astype(np.int64, copy=False).ravel()
    joint = np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    confusion = joint[: num_classes * num_classes].reshape(num_classes, num_classes)
    return np.stack([np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)], axis=1).astype(
        np.float64
    )


def dice_from_counts(counts: np.ndarray, empty_as_zero: bool = False) -> np.ndarray:
    """Dice per class from `overlap_counts`.

    A class absent from both prediction and truth is not applicable (NaN); one predicted where the truth has
    none scores 0 (a false positive). `empty_as_zero` is the reference test.py's rule: 0 whenever the truth
    lacks the class.
    """
    intersection, predicted, true = counts[:, 0], counts[:, 1], counts[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * intersection / (predicted + true)
    if empty_as_zero:
        return np.where(true > 0, dice, 0.0)
    return np.where(true > 0, dice, np.where(predicted > 0, 0.0, math.nan))


def organ_dice(pred, truth, num_classes: int, empty_as_zero: bool = False) -> np.ndarray:
    """Dice for classes 1..num_classes-1 (background excluded); NaN where the organ is in neither map."""
    return dice_from_counts(overlap_counts(pred, truth, num_classes), empty_as_zero)[1:]


class DiceAccumulator:
    """Per-organ Dice summed over cases; the sums all-reduce across ranks without double counting.

    The score of an organ is the mean of its per-case Dice over the cases where it applies (see
    `dice_from_counts`); the headline number is the mean over organs (background excluded).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sums = torch.zeros(num_classes - 1, dtype=torch.float64)
        self.counts = torch.zeros(num_classes - 1, dtype=torch.float64)

    def add(self, pred, truth) -> np.ndarray:
        """Score one case; returns its per-organ Dice."""
        dice = organ_dice(pred, truth, self.num_classes)
        present = ~np.isnan(dice)
        self.sums += torch.from_numpy(np.where(present, dice, 0.0))
        self.counts += torch.from_numpy(present.astype(np.float64))
        return dice

    def all_reduce(self) -> None:
        from unetr_cli.distributed import all_reduce_sum

        packed = torch.cat([self.sums, self.counts])
        all_reduce_sum(packed)
        self.sums, self.counts = packed[: self.num_classes - 1], packed[self.num_classes - 1 :]

    def per_organ(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (self.sums / self.counts).numpy()

    def mean(self) -> float:
        scores = self.per_organ()
        return float(np.nanmean(scores)) if np.any(~np.isnan(scores)) else math.nan


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing) -> float | None:
    """95th-percentile symmetric Hausdorff distance in mm between two masks (MONAI's surface distance on the
    masks' joint bounding box); None when either mask is empty."""
    if not pred.any() or not truth.any():
        return None
    from monai.metrics import compute_hausdorff_distance

    return _on_joint_box(
        compute_hausdorff_distance, pred, truth, include_background=True, percentile=95, spacing=spacing
    )


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float) -> float | None:
    """Normalised surface Dice: the share of both masks' surfaces within `tolerance_mm` of the other's
    (MONAI's compute_surface_dice on the joint bounding box); 0 when one mask is empty, None when both
    are."""
    if not pred.any() and not truth.any():
        return None
    if not pred.any() or not truth.any():
        return 0.0
    from monai.metrics import compute_surface_dice

    return _on_joint_box(
        compute_surface_dice,
        pred,
        truth,
        class_thresholds=[tolerance_mm],
        include_background=True,
        spacing=spacing,
    )


def _on_joint_box(metric, pred: np.ndarray, truth: np.ndarray, spacing, **options) -> float:
    """A MONAI distance metric of two masks, cropped to their joint bounding box plus a voxel."""
    import warnings

    both = np.argwhere(pred | truth)
    low, high = np.maximum(both.min(axis=0) - 1, 0), both.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    with warnings.catch_warnings():  # MONAI warns about its own internal default change
        warnings.simplefilter("ignore", FutureWarning)
        value = metric(
            torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None],
            torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None],
            spacing=[float(s) for s in spacing],
            **options,
        )
    return float(value.item())


def organ_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing,
    num_classes: int,
    empty_as_zero: bool = False,
    with_distance: bool = True,
    surface_tolerance_mm: float | None = None,
) -> list[dict]:
    """Per organ: Dice, HD95 (mm), surface Dice at `surface_tolerance_mm` (with distances), predicted and
    true volume and their difference (ml)."""
    counts = overlap_counts(pred, truth, num_classes)
    dice = dice_from_counts(counts, empty_as_zero)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for label in range(1, num_classes):
        predicted_ml, true_ml = counts[label, 1] * voxel_ml, counts[label, 2] * voxel_ml
        in_either = counts[label, 1] > 0 or counts[label, 2] > 0
        rows.append(
            {
                "label": label,
                "dice": None if math.isnan(dice[label]) else float(dice[label]),
                "hd95_mm": hausdorff95(pred == label, truth == label, spacing)
                if with_distance and in_either
                else None,
                "surface_dice": surface_dice(pred == label, truth == label, spacing, surface_tolerance_mm)
                if with_distance and in_either and surface_tolerance_mm
                else None,
                "volume_pred_ml": round(predicted_ml, 3),
                "volume_true_ml": round(true_ml, 3),
                "volume_diff_ml": round(predicted_ml - true_ml, 3) if in_either else None,
            }
        )
    return rows
