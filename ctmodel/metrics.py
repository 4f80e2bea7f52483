"""Per-case segmentation metrics in 3-D (Dice, IoU, NSD, HD95, volumes), the study's slice-level means, and the
slice-level false-positive rate on lesion-free slices.

Conventions for empty masks (docs/metrics.md has the table and the comparison with MONAI and DeepMind):
both empty -> Dice, IoU, NSD 1 and HD95 0; exactly one empty -> Dice, IoU, NSD 0 and HD95 the volume's
diagonal in mm (the largest distance possible on the grid, as BraTS does), so a missed lesion is never
dropped from a mean as NaN.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ctmodel.surface import hd95, nsd, surface_distances


@dataclass(frozen=True)
class SliceScores:
    """Per-slice Dice/IoU of one case, kept as sums so that cases pool exactly."""

    n_slices: int  # axial slices scored
    n_empty: int  # slices empty in both truth and prediction
    dice_sum: float  # sum of per-slice Dice over the other (non-empty) slices
    iou_sum: float

    def mean(self, metric: str, empty_slices: str) -> float:
        """Mean per-slice ``metric`` ('dice'/'iou'); ``empty_slices`` 'one' scores empty slices 1, 'exclude' drops
        them."""
        total = self.dice_sum if metric == "dice" else self.iou_sum
        if empty_slices == "one":
            return (total + self.n_empty) / self.n_slices if self.n_slices else math.nan
        scored = self.n_slices - self.n_empty
        return total / scored if scored else math.nan

    def __add__(self, other: "SliceScores") -> "SliceScores":
        return SliceScores(self.n_slices + other.n_slices, self.n_empty + other.n_empty,
                           self.dice_sum + other.dice_sum, self.iou_sum + other.iou_sum)


@dataclass(frozen=True)
class FalsePositiveSlices:
    """Axial slices whose truth is empty, and how many of them the prediction marks anyway (>= 1 voxel); kept as
    counts so that cases pool exactly."""

    empty_truth: int  # slices with no true lesion voxel
    false_positive: int  # of those, slices with at least one predicted voxel

    @property
    def rate(self) -> float:
        """false_positive / empty_truth: the slice-level false-positive rate on lesion-free slices; NaN without any."""
        return self.false_positive / self.empty_truth if self.empty_truth else math.nan

    def __add__(self, other: "FalsePositiveSlices") -> "FalsePositiveSlices":
        return FalsePositiveSlices(self.empty_truth + other.empty_truth, self.false_positive + other.false_positive)


NO_SLICES = FalsePositiveSlices(0, 0)


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one case; volumes in mL, distances in mm."""

    dice: float
    iou: float
    nsd: float
    hd95_mm: float
    pred_ml: float
    true_ml: float
    slices: SliceScores
    fp_slices: FalsePositiveSlices = NO_SLICES  # on the grid of the 3-D scores (native or store)

    @property
    def fp_rate(self) -> float:
        """Slice-level false-positive rate on this case's lesion-free slices (NaN when every slice has lesion)."""
        return self.fp_slices.rate

    def row(self) -> dict:
        """A flat dict for the per-case CSV (slice-level means both ways, labelled; the false-positive counts)."""
        row = {k: v for k, v in asdict(self).items() if k not in ("slices", "fp_slices")}
        row.update(slice_dice_empty1=self.slices.mean("dice", "one"), slice_iou_empty1=self.slices.mean("iou", "one"),
                   slice_dice_excl=self.slices.mean("dice", "exclude"),
                   slice_iou_excl=self.slices.mean("iou", "exclude"),
                   n_slices=self.slices.n_slices, n_empty_slices=self.slices.n_empty,
                   slice_dice_sum=self.slices.dice_sum, slice_iou_sum=self.slices.iou_sum,
                   fp_rate=self.fp_rate, empty_truth_slices=self.fp_slices.empty_truth,
                   fp_slices=self.fp_slices.false_positive)
        return row


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|P∩T| / (|P| + |T|); 1.0 when both masks are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 2.0 * np.count_nonzero(pred & truth) / total if total else 1.0


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU |P∩T| / |P∪T|; 1.0 when both masks are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    union = np.count_nonzero(pred | truth)
    return np.count_nonzero(pred & truth) / union if union else 1.0


def volume_ml(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Mask volume in millilitres (1 mL = 1000 mm³)."""
    return float(np.count_nonzero(mask) * np.prod(spacing_mm) / 1000.0)


def diagonal_mm(shape: tuple[int, ...], spacing_mm: tuple[float, float, float]) -> float:
    """Length of the volume's diagonal in mm: the HD95 given when exactly one mask is empty."""
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing_mm)) ** 2)))


def slice_scores(pred: np.ndarray, truth: np.ndarray) -> SliceScores:
    """Per-axial-slice (axis 0) Dice and IoU sums, and the count of slices empty in both masks."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    n = pred.shape[0]
    inter = np.count_nonzero((pred & truth).reshape(n, -1), axis=1)
    sizes = np.count_nonzero(pred.reshape(n, -1), axis=1) + np.count_nonzero(truth.reshape(n, -1), axis=1)
    empty = sizes == 0
    union = sizes - inter
    slice_dice = 2.0 * inter[~empty] / sizes[~empty]
    slice_iou = inter[~empty] / union[~empty]
    return SliceScores(int(n), int(empty.sum()), float(slice_dice.sum()), float(slice_iou.sum()))


def false_positive_slices(pred: np.ndarray, truth: np.ndarray) -> FalsePositiveSlices:
    """Count the axial slices (axis 0) with an empty truth, and those of them with >= 1 predicted voxel."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    n = truth.shape[0]
    empty = ~truth.reshape(n, -1).any(axis=1)
    marked = pred.reshape(n, -1).any(axis=1)
    return FalsePositiveSlices(int(empty.sum()), int((empty & marked).sum()))


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float],
                    tolerance_mm: float) -> tuple[float, float]:
    """(NSD at ``tolerance_mm``, HD95 in mm) with the documented empty-mask conventions."""
    pred_empty, truth_empty = not np.any(pred), not np.any(truth)
    if pred_empty and truth_empty:
        return 1.0, 0.0
    if pred_empty or truth_empty:
        return 0.0, diagonal_mm(np.shape(pred), spacing_mm)
    distances = surface_distances(pred, truth, spacing_mm)
    return nsd(distances, tolerance_mm), hd95(distances)


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float],
                 tolerance_mm: float = 1.0) -> CaseMetrics:
    """All metrics of one case from (Z, rows, cols) boolean masks and the (z, row, col) spacing in mm."""
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction shape {np.shape(pred)} != truth shape {np.shape(truth)}")
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    surface_dice, hd = surface_metrics(pred, truth, spacing_mm, tolerance_mm)
    return CaseMetrics(dice=dice(pred, truth), iou=iou(pred, truth), nsd=surface_dice, hd95_mm=hd,
                       pred_ml=volume_ml(pred, spacing_mm), true_ml=volume_ml(truth, spacing_mm),
                       slices=slice_scores(pred, truth), fp_slices=false_positive_slices(pred, truth))


def summary_stats(values: list[float]) -> dict:
    """mean, sd (n-1), median and n of the finite values (NaN figures and n 0 when there are none)."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": math.nan, "sd": math.nan, "median": math.nan, "n": 0}
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return {"mean": float(finite.mean()), "sd": sd, "median": float(np.median(finite)), "n": int(finite.size)}
