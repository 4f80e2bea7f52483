"""Calibration of predicted probabilities against the rater fraction: expected calibration error (ECE) over 10
equal-width bins (Guo et al. 2017) and a reliability-diagram PNG; docs/raters.md "Evaluation" gives the choices.

The rater fraction of a voxel is the mean of its raters' masks (0, 1/R, ..., 1). Only voxels of the calibration
region count: where the thresholded prediction or any rater is positive (background voxels, predicted ~0 and
marked by no rater, would otherwise dominate every bin count and drive the ECE to ~0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctprep.atomic import replacing

N_BINS = 10
REGION = "voxels where the thresholded prediction or any rater is positive"


@dataclass(frozen=True)
class Reliability:
    """Per probability bin: voxel count, sum of predicted probabilities, sum of rater fractions (sums pool exactly)."""

    counts: tuple[int, ...]
    prob_sums: tuple[float, ...]
    fraction_sums: tuple[float, ...]

    @property
    def voxels(self) -> int:
        """Voxels of the calibration region."""
        return int(sum(self.counts))

    @property
    def ece(self) -> float:
        """sum over bins of (n_b / N) * |mean fraction_b - mean probability_b|; NaN for an empty region."""
        if not self.voxels:
            return math.nan
        gaps = np.abs(np.subtract(self.fraction_sums, self.prob_sums))  # n_b * |mean gap| per bin
        return float(gaps.sum() / self.voxels)

    def bins(self) -> list[dict]:
        """Per bin: its probability range, voxel count, mean predicted probability and mean rater fraction."""
        rows = []
        for b, (n, p, f) in enumerate(zip(self.counts, self.prob_sums, self.fraction_sums)):
            rows.append({"low": b / N_BINS, "high": (b + 1) / N_BINS, "voxels": int(n),
                         "mean_probability": p / n if n else math.nan, "mean_rater_fraction": f / n if n else math.nan})
        return rows

    def __add__(self, other: "Reliability") -> "Reliability":
        return Reliability(tuple(np.add(self.counts, other.counts).tolist()),
                           tuple(np.add(self.prob_sums, other.prob_sums).tolist()),
                           tuple(np.add(self.fraction_sums, other.fraction_sums).tolist()))


EMPTY = Reliability((0,) * N_BINS, (0.0,) * N_BINS, (0.0,) * N_BINS)


def bin_of(probs: np.ndarray) -> np.ndarray:
    """Bin index of each probability: [0, 0.1) -> 0, ..., [0.9, 1.0] -> 9 (1.0 joins the last bin)."""
    return np.clip((np.asarray(probs, dtype=np.float64) * N_BINS).astype(np.int64), 0, N_BINS - 1)


def reliability(probs: np.ndarray, raters: np.ndarray, threshold: float = 0.5) -> Reliability:
    """Bin sums of ``probs`` against the rater fraction of ``raters`` (R, *probs.shape) over the calibration region."""
    probs = np.asarray(probs, dtype=np.float64)
    raters = np.asarray(raters, dtype=bool)
    if raters.shape[1:] != probs.shape:
        raise ValueError(f"raters shape {raters.shape} does not match probabilities {probs.shape}")
    fraction = raters.mean(axis=0)
    region = (probs >= threshold) | raters.any(axis=0)
    p, f = probs[region], fraction[region]
    bins = bin_of(p)
    return Reliability(tuple(np.bincount(bins, minlength=N_BINS).tolist()),
                       tuple(np.bincount(bins, weights=p, minlength=N_BINS).tolist()),
                       tuple(np.bincount(bins, weights=f, minlength=N_BINS).tolist()))


def calibration_summary(total: Reliability, grid: str) -> dict:
    """The JSON block: ECE, voxels, bins, region and grid."""
    return {"ece": total.ece, "voxels": total.voxels, "bins": total.bins(), "n_bins": N_BINS, "region": REGION,
            "grid": grid}


def reliability_png(path: Path) -> Path:
    """Where the reliability diagram of an evaluation CSV goes: beside it, ``<stem>-reliability.png``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-reliability.png")


def write_reliability(total: Reliability, path: Path, title: str) -> Path:
    """Reliability diagram: mean rater fraction against mean predicted probability per bin (bars at the bins,
    the diagonal of perfect calibration), the voxel count of each bin below; written via temp + rename."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = total.bins()
    centres = np.array([(b["low"] + b["high"]) / 2 for b in bins])
    observed = np.array([b["mean_rater_fraction"] for b in bins])
    predicted = np.array([b["mean_probability"] for b in bins])
    counts = np.array([b["voxels"] for b in bins])
    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = 1.0 / N_BINS
    top.bar(centres, np.nan_to_num(observed), width=width * 0.9, color="tab:blue", alpha=0.8,
            label="mean rater fraction")
    top.plot(predicted, observed, "o", color="tab:orange", label="bin (mean probability, mean rater fraction)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed rater fraction",
            title=f"{title}\nECE {total.ece:.4f} over {total.voxels} voxels ({N_BINS} bins)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.bar(centres, counts, width=width * 0.9, color="tab:gray")
    bottom.set(xlabel="predicted probability", ylabel="voxels")
    if counts.max(initial=0) > 0:
        bottom.set_yscale("log")
    for x, n in zip(centres, counts):
        bottom.annotate(str(int(n)), (x, n if n else 1), ha="center", va="bottom", fontsize=7)
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path
