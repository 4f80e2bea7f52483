"""Surface distances, HD95 and NSD against hand-computed cases, all-pairs distances and scipy's exact EDT."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from ctmodel.surface import SurfaceDistances, hd95, nsd, surface_distances, surface_voxels

FACE = ndimage.generate_binary_structure(3, 1)


def _ball(shape, centre, radius_vox):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius_vox**2


def _blobs(seed: int, shape=(14, 30, 26)) -> np.ndarray:
    """Random smooth blobs: thresholded Gaussian-filtered noise (several components, holes, border contact)."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1.0, 2.5, 2.5)) > 0.08


def _scipy_reference(pred, truth, spacing):
    """Independent reference: surfaces by scipy erosion, distances by scipy's exact EDT on the full grid."""
    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, structure=FACE, border_value=0)

    s_pred, s_truth = surface(pred), surface(truth)
    to_truth = ndimage.distance_transform_edt(~s_truth, sampling=spacing)[s_pred]
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)[s_truth]
    return s_pred, s_truth, to_truth, to_pred


def _cdist_reference(pred, truth, spacing):
    """The former library path, kept as the reference: every pair of surface points, on the full grid, no crop."""
    def points(mask):
        return torch.from_numpy(np.argwhere(surface_voxels(mask)) * np.asarray(spacing, dtype=np.float64))

    def nearest(a, b):
        # exact differences, not the |a|² + |b|² - 2ab shortcut, whose cancellation turns 0 mm into ~1e-7 mm
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.numpy()

    p, t = points(pred), points(truth)
    return SurfaceDistances(pred_to_truth=nearest(p, t), truth_to_pred=nearest(t, p))


def _assert_same_as_cdist(pred, truth, spacing):
    """Distances (as multisets, and in surface-voxel order), HD95 and NSD equal the all-pairs reference within 1e-6."""
    reference, distances = _cdist_reference(pred, truth, spacing), surface_distances(pred, truth, spacing)
    np.testing.assert_allclose(distances.pred_to_truth, reference.pred_to_truth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(distances.truth_to_pred, reference.truth_to_pred, rtol=0, atol=1e-6)
    assert hd95(distances) == pytest.approx(hd95(reference), abs=1e-6)
    for tolerance in (0.0, 0.7, 1.0, 2.5, 5.0):  # equal within 1e-6 mm: a tie at the tolerance may round either way
        assert nsd(reference, tolerance - 1e-6) <= nsd(distances, tolerance) <= nsd(reference, tolerance + 1e-6)


def test_surface_of_solid_cube_is_its_shell():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    expected = mask.copy()
    expected[3:5, 3:5, 3:5] = False
    assert np.array_equal(surface_voxels(mask), expected)


def test_mask_touching_the_array_border_has_surface_there():
    mask = np.ones((3, 4, 5), bool)
    surface = surface_voxels(mask)
    assert surface[0].all() and surface[-1].all() and not surface[1, 1:-1, 1:-1].any()


@pytest.mark.parametrize("axis, spacing", [(0, (2.5, 0.7, 0.8)), (1, (2.5, 0.7, 0.8)), (2, (1.0, 1.0, 3.0))])
def test_single_voxels_apart_give_distance_in_mm_along_that_axis(axis, spacing):
    pred, truth = np.zeros((6, 6, 6), bool), np.zeros((6, 6, 6), bool)
    pred[1, 1, 1] = True
    where = [1, 1, 1]
    where[axis] = 4  # three voxels away
    truth[tuple(where)] = True
    distances = surface_distances(pred, truth, spacing)
    assert hd95(distances) == pytest.approx(3 * spacing[axis])
    assert nsd(distances, tolerance_mm=3 * spacing[axis]) == 1.0
    assert nsd(distances, tolerance_mm=3 * spacing[axis] - 1e-6) == 0.0


@pytest.mark.parametrize("offset", [1, 2, 5])
def test_parallel_planes_offset_by_k_slices_are_k_times_slice_spacing_apart(offset):
    spacing = (2.5, 0.7, 0.8)
    pred, truth = np.zeros((10, 12, 9), bool), np.zeros((10, 12, 9), bool)
    pred[2], truth[2 + offset] = True, True
    distances = surface_distances(pred, truth, spacing)
    assert np.allclose(distances.pred_to_truth, offset * 2.5) and np.allclose(distances.truth_to_pred, offset * 2.5)
    assert hd95(distances) == pytest.approx(offset * 2.5)


def test_concentric_spheres_are_their_radius_difference_apart():
    shape, centre = (40, 40, 40), (20, 20, 20)
    inner, outer = _ball(shape, centre, 10), _ball(shape, centre, 13)
    distances = surface_distances(inner, outer, (1.0, 1.0, 1.0))
    assert hd95(distances) == pytest.approx(3.0, abs=1.0)  # one voxel of digitisation error
    assert nsd(distances, tolerance_mm=1.0) == 0.0  # no surface point is within 1 mm of the other
    assert nsd(distances, tolerance_mm=4.5) == 1.0


def test_identical_masks_have_zero_distance_and_full_nsd():
    mask = _blobs(3)
    distances = surface_distances(mask, mask, (2.0, 0.6, 0.6))
    assert hd95(distances) == 0.0 and nsd(distances, 0.0) == 1.0


def test_hd95_is_the_max_of_the_two_directed_95th_percentiles_not_the_pooled_one():
    one_way = np.arange(100, dtype=float)  # p95 = 94.05 by linear interpolation
    other_way = np.zeros(100)
    distances = SurfaceDistances(pred_to_truth=one_way, truth_to_pred=other_way)
    pooled = np.percentile(np.concatenate([one_way, other_way]), 95)
    assert hd95(distances) == pytest.approx(94.05)
    assert hd95(SurfaceDistances(other_way, one_way)) == pytest.approx(94.05)
    assert pooled != pytest.approx(94.05)


def test_nsd_counts_both_surfaces():
    distances = SurfaceDistances(pred_to_truth=np.array([0.0, 0.5, 2.0]), truth_to_pred=np.array([0.2, 3.0]))
    assert nsd(distances, tolerance_mm=1.0) == pytest.approx(3 / 5)


@pytest.mark.parametrize("seed", range(4))
def test_distances_match_scipy_exact_edt_on_random_blobs(seed):
    spacing = (2.5, 0.7, 0.9)
    pred, truth = _blobs(seed), _blobs(seed + 100)
    s_pred, s_truth, to_truth, to_pred = _scipy_reference(pred, truth, spacing)
    distances = surface_distances(pred, truth, spacing)
    assert np.array_equal(surface_voxels(pred), s_pred) and np.array_equal(surface_voxels(truth), s_truth)
    np.testing.assert_allclose(np.sort(distances.pred_to_truth), np.sort(to_truth), atol=1e-9)
    np.testing.assert_allclose(np.sort(distances.truth_to_pred), np.sort(to_pred), atol=1e-9)
    reference_hd95 = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    assert hd95(distances) == pytest.approx(reference_hd95, abs=1e-9)
    for tolerance in (0.5, 1.0, 2.5):
        reference_nsd = (np.sum(to_truth <= tolerance) + np.sum(to_pred <= tolerance)) / (to_truth.size + to_pred.size)
        assert nsd(distances, tolerance) == pytest.approx(reference_nsd)


def test_distances_match_scipy_when_one_mask_is_far_from_the_other():
    spacing = (1.5, 0.8, 0.8)
    pred, truth = np.zeros((20, 40, 40), bool), np.zeros((20, 40, 40), bool)
    pred[2:6, 3:10, 5:12] = True
    truth[12:18, 25:37, 20:38] = True
    _, _, to_truth, to_pred = _scipy_reference(pred, truth, spacing)
    distances = surface_distances(pred, truth, spacing)
    np.testing.assert_allclose(np.sort(distances.pred_to_truth), np.sort(to_truth), atol=1e-9)
    np.testing.assert_allclose(np.sort(distances.truth_to_pred), np.sort(to_pred), atol=1e-9)


ANISOTROPIC = [(1.0, 1.0, 1.0), (5.0, 0.7, 0.7), (2.5, 0.7, 0.9)]


@pytest.mark.parametrize("spacing", ANISOTROPIC)
def test_single_voxels_and_planes_match_the_all_pairs_reference(spacing):
    pred, truth = np.zeros((6, 7, 8), bool), np.zeros((6, 7, 8), bool)
    pred[1, 1, 1], truth[4, 5, 2] = True, True
    _assert_same_as_cdist(pred, truth, spacing)
    pred, truth = np.zeros((10, 12, 9), bool), np.zeros((10, 12, 9), bool)
    pred[2], truth[7, 3:9, 2:5] = True, True
    _assert_same_as_cdist(pred, truth, spacing)


@pytest.mark.parametrize("spacing", ANISOTROPIC)
def test_spheres_match_the_all_pairs_reference(spacing):
    shape = (24, 40, 40)
    inner, outer = _ball(shape, (12, 20, 20), 7), _ball(shape, (11, 22, 19), 10)
    _assert_same_as_cdist(inner, outer, spacing)
    _assert_same_as_cdist(outer, _ball(shape, (12, 14, 26), 5), spacing)  # overlapping, off-centre


@pytest.mark.parametrize("spacing", ANISOTROPIC)
def test_masks_touching_every_array_border_match_the_all_pairs_reference(spacing):
    pred, truth = np.zeros((8, 11, 13), bool), np.zeros((8, 11, 13), bool)
    pred[:5, :, :7] = True  # touches five faces of the array: its surface runs along them
    truth[3:, 4:, 5:] = True  # touches the three others
    truth[0, 0, 12] = True  # a lone voxel in a corner
    assert surface_voxels(pred)[0].any() and surface_voxels(truth)[-1].any()
    _assert_same_as_cdist(pred, truth, spacing)
    _assert_same_as_cdist(np.ones_like(pred), truth, spacing)  # a mask filling the whole array


@pytest.mark.parametrize("seed", range(3))
def test_random_blobs_match_the_all_pairs_reference_at_thick_slice_spacing(seed):
    _assert_same_as_cdist(_blobs(seed), _blobs(seed + 50), (5.0, 0.7, 0.7))


@settings(max_examples=60, deadline=None)
@given(pred=arrays(bool, (5, 6, 7)), truth=arrays(bool, (5, 6, 7)),
       spacing=st.tuples(*[st.floats(0.3, 6.0)] * 3))
def test_any_pair_of_non_empty_masks_matches_the_all_pairs_reference(pred, truth, spacing):
    if pred.any() and truth.any():
        _assert_same_as_cdist(pred, truth, spacing)


def test_cropping_to_the_union_box_keeps_the_surfaces_of_the_whole_grid():
    pred = np.zeros((12, 16, 16), bool)
    pred[3:7, 5:9, 6:12] = True  # inside the box, away from the array's edge: same surface whether cropped or not
    truth = np.zeros_like(pred)
    truth[5:9, 8:14, 2:7] = True
    distances = surface_distances(pred, truth, (5.0, 0.7, 0.7))
    assert distances.pred_to_truth.size == np.count_nonzero(surface_voxels(pred))
    assert distances.truth_to_pred.size == np.count_nonzero(surface_voxels(truth))


@pytest.mark.parametrize("empty", ["pred", "truth"])
def test_an_empty_mask_is_refused_because_its_convention_lives_in_metrics(empty):
    masks = {"pred": _ball((9, 9, 9), (4, 4, 4), 3), "truth": _ball((9, 9, 9), (4, 4, 4), 2)}
    masks[empty] = np.zeros((9, 9, 9), bool)
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(masks["pred"], masks["truth"], (1.0, 1.0, 1.0))


def test_a_surface_one_voxel_away_is_within_one_spacing_wherever_it_lies():
    spacing = (5.0, 0.7, 0.7)  # 6 * 0.7 - 5 * 0.7 = 0.7000000000000002 in floating point: mm coordinates misjudge it
    for col in range(2, 14):
        pred, truth = np.zeros((3, 4, 16), bool), np.zeros((3, 4, 16), bool)
        pred[:, :, col], truth[:, :, col + 1] = True, True
        truth[0, 0, 0] = True  # an anchor at the origin, so that the planes do not sit at the union box's corner
        distances = surface_distances(pred, truth, spacing)
        assert np.all(distances.pred_to_truth == 0.7)
        assert np.count_nonzero(distances.pred_to_truth <= 0.7) == pred.sum()


def test_distances_are_exactly_translation_invariant():
    pred, truth = _blobs(7, shape=(10, 20, 20)), _blobs(8, shape=(10, 20, 20))
    big_pred, big_truth = np.zeros((25, 45, 41), bool), np.zeros((25, 45, 41), bool)
    big_pred[9:19, 17:37, 13:33], big_truth[9:19, 17:37, 13:33] = pred, truth
    spacing = (5.0, 0.7, 0.7)
    here, there = surface_distances(pred, truth, spacing), surface_distances(big_pred, big_truth, spacing)
    assert np.array_equal(here.pred_to_truth, there.pred_to_truth)
    assert np.array_equal(here.truth_to_pred, there.truth_to_pred)
