"""Surface distances, HD95 and NSD against hand-computed cases and scipy's exact distance transform."""
from __future__ import annotations

import numpy as np
import pytest
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
