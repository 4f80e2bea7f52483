"""Per-case metrics: overlap on hand-computed cases, volumes in mL, empty-mask conventions, slice-level means."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctmodel.metrics import (SliceScores, case_metrics, diagonal_mm, dice, iou, slice_scores, surface_metrics,
                             volume_ml)

SPACING = (2.5, 0.7, 0.8)


def _cube(shape=(12, 20, 20), start=(2, 4, 4), side=6):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


@pytest.mark.parametrize("shift", [0, 1, 3, 5])
def test_cube_shifted_by_k_voxels_has_dice_and_iou_of_its_overlap(shift):
    truth, pred = _cube(), _cube(start=(2, 4 + shift, 4))
    overlap = 6 - shift  # 6x6x6 cubes overlapping in a 6 x (6 - k) x 6 box
    assert dice(pred, truth) == pytest.approx(2 * overlap / 12)
    assert iou(pred, truth) == pytest.approx(overlap / (12 - overlap))


def test_volume_is_voxels_times_voxel_volume_in_ml():
    assert volume_ml(_cube(), SPACING) == pytest.approx(6**3 * 2.5 * 0.7 * 0.8 / 1000)


def test_anisotropic_sphere_volume_matches_the_ellipsoid_formula():
    spacing, radius_mm = (3.0, 0.75, 0.75), 15.0
    grid = np.indices((20, 60, 60)).astype(float)
    centre = (10, 30, 30)
    mask = sum(((g - c) * s / radius_mm) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 1
    assert volume_ml(mask, spacing) == pytest.approx(4 / 3 * math.pi * radius_mm**3 / 1000, rel=0.03)


def test_both_empty_gives_documented_value():
    empty = np.zeros((5, 8, 8), bool)
    result = case_metrics(empty, empty, SPACING, tolerance_mm=1.0)
    assert (result.dice, result.iou, result.nsd, result.hd95_mm) == (1.0, 1.0, 1.0, 0.0)
    assert result.pred_ml == result.true_ml == 0.0


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_empty_gives_zero_overlap_and_the_volume_diagonal_as_hd95(empty_side):
    shape = (5, 8, 8)
    lesion, empty = _cube(shape, (1, 2, 2), 3), np.zeros(shape, bool)
    pred, truth = (empty, lesion) if empty_side == "pred" else (lesion, empty)
    result = case_metrics(pred, truth, SPACING, tolerance_mm=1.0)
    expected_diagonal = math.sqrt((5 * 2.5) ** 2 + (8 * 0.7) ** 2 + (8 * 0.8) ** 2)
    assert (result.dice, result.iou, result.nsd) == (0.0, 0.0, 0.0)
    assert result.hd95_mm == pytest.approx(expected_diagonal)
    assert diagonal_mm(shape, SPACING) == pytest.approx(expected_diagonal)


def test_perfect_prediction_scores_one_and_zero_distance():
    truth = _cube()
    result = case_metrics(truth, truth, SPACING, tolerance_mm=0.0)
    assert (result.dice, result.iou, result.nsd, result.hd95_mm) == (1.0, 1.0, 1.0, 0.0)


def test_one_slice_shift_gives_slice_spacing_hd95_and_nsd_step_at_that_tolerance():
    truth = _cube()
    pred = _cube(start=(3, 4, 4))  # one slice (2.5 mm) higher
    assert surface_metrics(pred, truth, SPACING, tolerance_mm=2.5)[0] == 1.0
    nsd_below, hd = surface_metrics(pred, truth, SPACING, tolerance_mm=2.4)
    assert hd == pytest.approx(2.5) and nsd_below < 1.0


def _slice_case():
    """Four slices: both empty; identical; prediction misses; half overlap."""
    truth, pred = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    truth[1, :2, :2] = pred[1, :2, :2] = True
    truth[2, :2, :2] = True
    truth[3, :2, :2] = True
    pred[3, :2, 1:3] = True  # 2 of 4 pixels overlap: Dice 0.5, IoU 2/6
    return pred, truth


def test_slice_means_both_ways_from_a_hand_computed_case():
    scores = slice_scores(*_slice_case())
    assert (scores.n_slices, scores.n_empty) == (4, 1)
    assert scores.mean("dice", "one") == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert scores.mean("dice", "exclude") == pytest.approx((1 + 0 + 0.5) / 3)
    assert scores.mean("iou", "one") == pytest.approx((1 + 1 + 0 + 1 / 3) / 4)
    assert scores.mean("iou", "exclude") == pytest.approx((1 + 0 + 1 / 3) / 3)


def test_scoring_empty_slices_as_one_inflates_the_slice_mean():
    pred, truth = _slice_case()
    padded_pred = np.concatenate([pred, np.zeros((20, 4, 4), bool)])
    padded_truth = np.concatenate([truth, np.zeros((20, 4, 4), bool)])
    before, after = slice_scores(pred, truth), slice_scores(padded_pred, padded_truth)
    assert after.mean("dice", "one") > before.mean("dice", "one")
    assert after.mean("dice", "exclude") == pytest.approx(before.mean("dice", "exclude"))


def test_slice_scores_pool_across_cases_like_one_concatenated_volume():
    pred, truth = _slice_case()
    other_pred, other_truth = _cube((6, 4, 4), (0, 0, 0), 3), _cube((6, 4, 4), (1, 1, 1), 3)
    pooled = slice_scores(pred, truth) + slice_scores(other_pred, other_truth)
    together = slice_scores(np.concatenate([pred, other_pred]), np.concatenate([truth, other_truth]))
    for metric in ("dice", "iou"):
        for way in ("one", "exclude"):
            assert pooled.mean(metric, way) == pytest.approx(together.mean(metric, way))


def test_all_empty_slices_excluded_leaves_an_undefined_mean():
    scores = SliceScores(n_slices=3, n_empty=3, dice_sum=0.0, iou_sum=0.0)
    assert scores.mean("dice", "one") == 1.0 and math.isnan(scores.mean("dice", "exclude"))


def test_csv_row_labels_both_slice_conventions():
    row = case_metrics(*_slice_case(), SPACING).row()
    assert row["slice_dice_empty1"] == pytest.approx(2.5 / 4)
    assert row["slice_dice_excl"] == pytest.approx(1.5 / 3)
    assert {"dice", "iou", "nsd", "hd95_mm", "pred_ml", "true_ml", "n_slices", "n_empty_slices"} <= set(row)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), fill=st.floats(0.05, 0.6))
def test_metric_invariants_on_random_masks(seed, fill):
    rng = np.random.default_rng(seed)
    pred, truth = rng.random((4, 7, 6)) < fill, rng.random((4, 7, 6)) < fill
    result = case_metrics(pred, truth, SPACING, tolerance_mm=1.0)
    swapped = case_metrics(truth, pred, SPACING, tolerance_mm=1.0)
    assert 0.0 <= result.iou <= result.dice <= 1.0
    assert result.iou == pytest.approx(result.dice / (2 - result.dice))  # IoU = D / (2 - D) for any masks
    assert (result.dice, result.nsd, result.hd95_mm) == pytest.approx((swapped.dice, swapped.nsd, swapped.hd95_mm))
    assert 0.0 <= result.hd95_mm <= diagonal_mm(pred.shape, SPACING)
    assert surface_metrics(pred, truth, SPACING, tolerance_mm=diagonal_mm(pred.shape, SPACING))[0] == 1.0
