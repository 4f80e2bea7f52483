"""Mask resampling (store format 2): no lesion component vanishes in the resize, and round trips stay faithful."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from ctprep import geometry

EIGHT_CONNECTED = np.ones((3, 3), bool)


def plane_geometry(side: int, n_slices: int, size: int) -> geometry.CaseGeometry:
    return geometry.describe(np.eye(4), (side, side, n_slices), size)


def linear_threshold(mask: np.ndarray, geom: geometry.CaseGeometry) -> np.ndarray:
    """The format-1 rule: the image's filter, threshold 0.5."""
    return (geometry.forward(mask.astype(np.float32), geom, fill=0.0) >= 0.5).astype(np.uint8)


def test_one_voxel_and_misaligned_two_by_two_lesions_survive_a_2x_shrink():
    mask = np.zeros((64, 64, 2), bool)
    mask[21, 21, 0] = True  # one voxel: at most 0.375^2 of a stored pixel's filter weight
    mask[41:43, 41:43, 1] = True  # 2x2 straddling four stored pixels: (0.375 + 0.125)^2 = 0.25 each
    geom = plane_geometry(64, 2, 32)
    assert linear_threshold(mask, geom).sum() == 0  # what format 1 stored
    stored = geometry.forward_mask(mask, geom)
    assert stored.reshape(2, -1).sum(axis=1).tolist() == [1, 1]


def test_a_lost_component_gets_the_stored_pixel_of_highest_coverage():
    mask = np.zeros((64, 64, 1), bool)
    mask[40, 20:23, 0] = True  # canonical x = 40, y = 20..22 -> plane row Y-1-y = 41..43, column X-1-x = 23
    stored = geometry.forward_mask(mask, plane_geometry(64, 1, 32))
    # voxel centres fall in rows 41 // 2 = 20 and 42 // 2 = 43 // 2 = 21; row 21 holds two of the three voxels
    assert np.argwhere(stored[0]).tolist() == [[21, 11]]


@settings(max_examples=60, deadline=None)
@given(mask=arrays(np.bool_, (2, 16, 16)), factor=st.sampled_from([2, 4]))
def test_every_component_keeps_a_stored_pixel_and_nothing_thresholded_is_removed(mask, factor):
    geom = plane_geometry(16, 2, 16 // factor)
    source = mask.transpose(2, 1, 0)[::-1, ::-1, :]  # (X, Y, Z) so that its stored planes are ``mask``
    stored = geometry.forward_mask(source, geom)
    assert np.all(stored >= linear_threshold(source, geom))  # the rule only adds pixels
    added = int(stored.sum() - linear_threshold(source, geom).sum())
    n_total = 0
    for plane, out in zip(mask, stored):
        labels, n = ndimage.label(plane, structure=EIGHT_CONNECTED)
        n_total += n
        for component in range(1, n + 1):
            rows, cols = np.nonzero(labels == component)
            assert out[rows // factor, cols // factor].any(), "a lesion component vanished"
    assert added <= n_total  # at most one pixel per rescued component


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("radius", [15, 25, 40])  # >= 700 voxels: >= 1 cm across at 0.7 mm
def test_round_trip_dice_of_reasonable_lesions_at_2x_is_at_least_095(radius):
    x, y = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    disc = (((x - 100.3) ** 2 + (y - 140.7) ** 2) <= radius**2)[:, :, None]  # off the pixel grid on purpose
    specks = np.zeros_like(disc)
    specks[20, 20, 0] = specks[230, 30:32, 0] = True  # rescued specks must not spoil the big lesion
    geom = plane_geometry(256, 1, 128)
    back = geometry.inverse_mask(geometry.forward_mask(disc | specks, geom), geom).astype(bool)
    around_disc = (slice(40, 200), slice(60, 256))  # x, y: the specks lie outside
    assert dice(back[around_disc], disc[around_disc]) >= 0.95


def test_source_lesion_voxels_count_each_stored_slice_on_the_source_grid():
    mask = np.zeros((10, 12, 3), bool)
    mask[2:4, 5, 0] = True
    mask[1, 1, 2] = True
    geom = geometry.describe(np.eye(4), mask.shape, 8)  # not square: 12 rows x 10 columns pad to 12 x 12
    assert geometry.source_lesion_voxels(mask, geom) == [2, 0, 1]
