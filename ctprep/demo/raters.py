"""Several plausible annotators of one demo case (``ctprep demo --raters R``), and their inter-rater Dice per lesion.

Each rater draws the truth's boundary moved by a smooth random field (about a voxel, in-plane pixels at 512 px)
plus a personal bias: rater 1 is careful (no bias), rater 2 draws generously (+1.5 px), rater 3 (when R >= 3)
misses faint ground-glass lesions (mean HU under ``FAINT_HU``) and draws a little tight, raters 4.. get a random
bias of under a voxel. The truth mask (the lesion blobs) is not changed. See docs/demo-data.md for the measured
inter-rater Dice.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import ndimage

from ctprep.demo.phantom import Phantom

MAX_RATERS = 8
FIELD_PX = 1.0  # standard deviation of the smooth boundary field, in pixels of a 512 matrix
FIELD_SMOOTH_MM = 6.0  # correlation length of that field
GENEROUS_PX = 2.0  # rater 2 draws this far outside the truth's boundary
TIGHT_PX = -0.6  # rater 3 draws this far inside
RANDOM_BIAS_PX = 0.7  # raters 4..: a bias drawn in +-this
FAINT_HU = -480.0  # rater 3 misses ground-glass lesions whose mean HU is below this (faint: close to the lung)
MARGIN_PX = 6  # the work box around the truth: the largest boundary shift plus a few pixels
RATER_STREAM = 2**32 + 7  # seeds the raters' generator apart from the phantom's five streams


def rater_masks(phantom: Phantom, n_raters: int, seed: int, index: int) -> list[np.ndarray]:
    """``n_raters`` uint8 (Z, Y, X) masks of case ``index``, each a plausible annotator's reading of the truth."""
    rng = np.random.default_rng([seed, index, RATER_STREAM])
    truth = phantom.mask.astype(bool)
    masks = [np.zeros(truth.shape, dtype=np.uint8) for _ in range(n_raters)]
    box = _box(truth)
    if box is None:
        return masks
    p = phantom.patient
    sampling = (p.slice_mm / p.pixel_mm, 1.0, 1.0)  # distances in in-plane pixels
    inside = truth[box]
    signed = (ndimage.distance_transform_edt(~inside, sampling=sampling)
              - ndimage.distance_transform_edt(inside, sampling=sampling))  # > 0 outside, <= 0 inside
    faint = _faint(truth[box], phantom.hu[box])
    for k in range(n_raters):
        bias = {0: 0.0, 1: GENEROUS_PX, 2: TIGHT_PX}.get(k, rng.uniform(-RANDOM_BIAS_PX, RANDOM_BIAS_PX))
        field = _smooth_field(rng, inside.shape, p.pixel_mm, p.slice_mm)
        drawn = signed < bias + FIELD_PX * field
        if k == 2:
            drawn &= ~faint
        masks[k][box] = drawn
    return masks


def _box(truth: np.ndarray) -> tuple[slice, ...] | None:
    """The truth's bounding box widened by MARGIN_PX in-plane and one slice, or None for an empty truth."""
    found = ndimage.find_objects(truth.astype(np.uint8))
    if not found or found[0] is None:
        return None
    margins = (1, MARGIN_PX, MARGIN_PX)
    return tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(found[0], margins, truth.shape))


def _faint(truth: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The voxels, widened by the largest boundary shift, of the truth's lesions whose mean HU is under FAINT_HU."""
    labels, count = ndimage.label(truth)
    if count == 0:
        return np.zeros(truth.shape, dtype=bool)
    means = ndimage.mean(hu.astype(np.float64), labels, index=np.arange(1, count + 1))
    faint = np.isin(labels, 1 + np.flatnonzero(np.asarray(means) < FAINT_HU))
    return ndimage.binary_dilation(faint, iterations=MARGIN_PX)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], pixel_mm: float, slice_mm: float) -> np.ndarray:
    """A smooth random field of unit standard deviation: white noise blurred over FIELD_SMOOTH_MM."""
    noise = rng.standard_normal(shape)
    sigma = (max(FIELD_SMOOTH_MM / slice_mm, 0.5), FIELD_SMOOTH_MM / pixel_mm, FIELD_SMOOTH_MM / pixel_mm)
    field = ndimage.gaussian_filter(noise, sigma, mode="reflect")
    return field / max(float(field.std()), 1e-12)


def lesion_dice(truth: np.ndarray, raters: list[np.ndarray]) -> list[float]:
    """Per lesion of ``truth`` (3-D connected component): the raters' mean pairwise Dice within the lesion's box
    widened by MARGIN_PX (pairs where both left it empty count 1). Empty for fewer than two raters."""
    if len(raters) < 2:
        return []
    labels, count = ndimage.label(np.asarray(truth) != 0)
    scores = []
    for box in ndimage.find_objects(labels):
        wide = tuple(slice(max(s.start - MARGIN_PX, 0), s.stop + MARGIN_PX) for s in box)
        pairs = [_dice(a[wide] != 0, b[wide] != 0) for a, b in combinations(raters, 2)]
        scores.append(float(np.mean(pairs)))
    return scores


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0
