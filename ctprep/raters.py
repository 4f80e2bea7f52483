"""Several annotators per case: rater ids, the consensus rules, and the per-slice rater statistics of the index.

See docs/raters.md. The consensus is formed on the SOURCE grid (what native-grid evaluation compares with) and
resized like any mask; each rater's mask is resized on its own; the per-slice statistics are on the store grid.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ctprep.errors import UsageError
from ctprep.geometry import CaseGeometry

CONSENSUS_RULES = ("majority", "union", "intersection")
DEFAULT_CONSENSUS = "majority"
SINGLE_RATER = "1"  # the rater id of a case with one mask file whose name names no rater (NAME_seg, labelsTr/NAME)
RATER_ID = re.compile(r"[A-Za-z0-9-]+")  # always fullmatch


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: r2 < r10, seg02 < seg10 (ties broken by the text itself)."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p), text


def sorted_raters(ids) -> list[str]:
    """Rater ids in natural order (``natural_key``)."""
    return sorted(ids, key=natural_key)


def check_consensus(rule: str) -> str:
    """``rule`` itself if it is one of CONSENSUS_RULES; UsageError otherwise."""
    if rule not in CONSENSUS_RULES:
        raise UsageError(f"--consensus {rule}: expected one of {', '.join(CONSENSUS_RULES)}")
    return rule


def majority_count(n_raters: int) -> int:
    """Raters that must mark a voxel for the majority rule: at least half of them, ceil(R/2) (LIDC's 50 %)."""
    return math.ceil(n_raters / 2)


def consensus(masks: list[np.ndarray], rule: str) -> np.ndarray:
    """The consensus of same-shaped rater masks (nonzero = lesion) as bool: majority (>= ceil(R/2) raters),
    union (any rater) or intersection (every rater)."""
    check_consensus(rule)
    if not masks:
        raise ValueError("consensus of no raters")
    votes = np.zeros(np.shape(masks[0]), dtype=np.int16)
    for mask in masks:
        votes += np.asarray(mask) != 0
    needed = {"majority": majority_count(len(masks)), "union": 1, "intersection": len(masks)}[rule]
    return votes >= needed


def slice_stats(raters: np.ndarray) -> tuple[list[int], list[float]]:
    """Per slice of (R, Z, S, S) rater masks: how many raters marked it, and their mean pairwise Dice.

    Agreement is NaN where every rater's slice is empty; a pair of raters who both left it empty counts as
    Dice 1 (they agree); one rater: 1.0 on a marked slice (nothing to disagree with), NaN on an empty one.
    """
    n_raters, n_slices = raters.shape[:2]
    flat = raters.reshape(n_raters, n_slices, -1).astype(bool)
    counts = flat.sum(axis=2).astype(np.int64)  # (R, Z) lesion pixels per rater and slice
    marked = (counts > 0).sum(axis=0)
    agreement = np.full(n_slices, np.nan)
    if n_raters == 1:
        agreement[marked > 0] = 1.0
    else:
        pairs = []
        for a, b in combinations(range(n_raters), 2):
            both = np.logical_and(flat[a], flat[b]).sum(axis=1)
            total = counts[a] + counts[b]
            pairs.append(np.where(total > 0, 2.0 * both / np.maximum(total, 1), 1.0))
        agreement = np.where(marked > 0, np.mean(pairs, axis=0), np.nan)
    return marked.astype(int).tolist(), agreement.tolist()


@dataclass(frozen=True)
class LabeledCase:
    """What a labeled case stores: the consensus mask (Z, S, S), the rater masks (R, Z, S, S), and its attributes."""

    mask: np.ndarray
    raters: np.ndarray
    rater_ids: list[str]
    attrs: dict  # lesion_pixels, source_lesion_voxels (consensus), rater_ids, raters_with_lesion, agreement


def label_case(masks: dict[str, np.ndarray], geom: CaseGeometry, rule: str) -> LabeledCase:
    """Source-grid rater masks (rater id -> mask) -> the stored arrays: the consensus formed on the source grid
    then resized, each rater resized on its own; per-slice rater statistics on the store grid."""
    from ctprep.preprocess import lesion_pixels, preprocess_mask, source_lesion_voxels  # preprocess imports store

    ids = sorted_raters(masks)
    truth = consensus([masks[r] for r in ids], rule)
    raters = np.stack([preprocess_mask(masks[r], geom) for r in ids])
    stored = raters[0] if len(ids) == 1 else preprocess_mask(truth, geom)  # one rater: the consensus is that mask
    with_lesion, agreement = slice_stats(raters)
    attrs = {"lesion_pixels": lesion_pixels(stored), "source_lesion_voxels": source_lesion_voxels(truth, geom),
             "rater_ids": ids, "raters_with_lesion": with_lesion,
             "agreement": [None if math.isnan(a) else a for a in agreement]}  # JSON has no NaN
    return LabeledCase(stored, raters, ids, attrs)
