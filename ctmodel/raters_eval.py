"""Scores of a case with several annotators: the prediction against each rater (mean, min and max over raters)
and the inter-rater ceiling (the raters against each other, mean over rater pairs); docs/raters.md "Evaluation".

Cases with one rater get no rater scores (their consensus is that rater): the evaluation CSV of a one-rater
store is exactly what it was before raters existed.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ctmodel.metrics import dice, iou, summary_stats, surface_metrics

RATER_METRICS = ("dice", "iou", "nsd", "hd95_mm")
SPREADS = ("mean", "min", "max")  # over the raters of one case, of the metric's value (for hd95_mm min is best)
LABELS = {"consensus": "vs consensus", "rater": "vs each rater (mean / min / max)",
          "interrater": "inter-rater ceiling"}


@dataclass(frozen=True)
class RaterScores:
    """One case's scores against each of its raters, and the mean over rater pairs of the raters' own scores."""

    rater_ids: tuple[str, ...]
    per_rater: tuple[tuple[float, ...], ...]  # per rater (rater_ids order): the RATER_METRICS of the prediction
    interrater: tuple[float, ...]  # per RATER_METRICS: the mean over unordered rater pairs

    def spread(self, metric: str, how: str) -> float:
        """``how`` ('mean', 'min' or 'max') over raters of the prediction's ``metric`` against each rater."""
        values = [scores[RATER_METRICS.index(metric)] for scores in self.per_rater]
        return float({"mean": np.mean, "min": np.min, "max": np.max}[how](values))

    def row(self) -> dict:
        """The per-case CSV columns: n_raters, <metric>_rater_mean/min/max, <metric>_interrater."""
        row: dict = {"n_raters": len(self.rater_ids)}
        for metric in RATER_METRICS:
            row.update({f"{metric}_rater_{how}": self.spread(metric, how) for how in SPREADS})
        row.update({f"{metric}_interrater": value for metric, value in zip(RATER_METRICS, self.interrater)})
        return row


def mask_scores(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float],
                tolerance_mm: float) -> tuple[float, ...]:
    """RATER_METRICS of ``pred`` against ``truth`` with the empty-mask conventions of ctmodel.metrics."""
    surface_dice, hd = surface_metrics(pred, truth, spacing_mm, tolerance_mm)
    return dice(pred, truth), iou(pred, truth), surface_dice, hd


def rater_scores(pred: np.ndarray, raters: dict[str, np.ndarray], spacing_mm: tuple[float, float, float],
                 tolerance_mm: float) -> RaterScores | None:
    """Scores of boolean ``pred`` against each rater mask (same grid) and of every rater pair; None with < 2 raters."""
    if len(raters) < 2:
        return None
    masks = {rater: np.asarray(mask, dtype=bool) for rater, mask in raters.items()}
    per_rater = tuple(mask_scores(pred, mask, spacing_mm, tolerance_mm) for mask in masks.values())
    pairs = [mask_scores(masks[a], masks[b], spacing_mm, tolerance_mm) for a, b in combinations(masks, 2)]
    interrater = tuple(float(np.mean(values)) for values in zip(*pairs))
    return RaterScores(tuple(masks), per_rater, interrater)


def rater_summary(cases: list[tuple[dict, RaterScores]], grid: str) -> dict:
    """Summary over the multi-rater cases, each given as (its vs-consensus metrics by name, its RaterScores):
    the three labelled blocks of docs/raters.md, statistics over cases of each per-case figure."""
    return {
        "cases": len(cases),
        "grid": grid,
        LABELS["consensus"]: {m: summary_stats([consensus[m] for consensus, _ in cases]) for m in RATER_METRICS},
        LABELS["rater"]: {m: {how: summary_stats([s.spread(m, how) for _, s in cases]) for how in SPREADS}
                          for m in RATER_METRICS},
        LABELS["interrater"]: {m: summary_stats([s.interrater[i] for _, s in cases])
                               for i, m in enumerate(RATER_METRICS)},
    }


def rater_rows(summary: dict, with_consensus: bool = True) -> list[tuple[object, ...]]:
    """Table rows (metric, mean ± sd or mean / min / max, median over cases) of ``rater_summary``'s labelled
    blocks; ``with_consensus`` False leaves out the vs-consensus rows (when the main rows cover the same cases)."""
    where = f"{summary['cases']} multi-rater cases, {summary['grid']} grid"
    rows: list[tuple[object, ...]] = []
    for metric in RATER_METRICS:
        if with_consensus:
            stats = summary[LABELS["consensus"]][metric]
            rows.append((f"{metric} vs consensus ({where})", f"{stats['mean']:.3f} ± {stats['sd']:.3f}",
                         stats["median"]))
        spread = summary[LABELS["rater"]][metric]
        rows.append((f"{metric} vs each rater, mean / min / max over raters ({where})",
                     " / ".join(f"{spread[how]['mean']:.3f}" for how in SPREADS), spread["mean"]["median"]))
        stats = summary[LABELS["interrater"]][metric]
        rows.append((f"{metric} inter-rater ceiling, mean over rater pairs ({where})",
                     f"{stats['mean']:.3f} ± {stats['sd']:.3f}", stats["median"]))
    return rows
