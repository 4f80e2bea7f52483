"""Surface metrics of 3-D masks with anisotropic spacing: surface voxels, surface distances, HD95 and NSD.

Definitions follow MONAI (``get_mask_edges``, ``compute_hausdorff_distance(percentile=95)``,
``compute_surface_dice``): the surface of a mask is its voxels removed by a 3-D erosion with face
connectivity (voxels outside the array count as background); distances are Euclidean in mm between
surface-voxel centres. Nearest distances come from a k-d tree over the surface points (exact, O(N log M));
docs/metrics.md says why not a distance transform, and gives the conventions on empty masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from every surface voxel of one mask to the nearest surface voxel of the other."""

    pred_to_truth: np.ndarray  # (n_pred_surface,) float64
    truth_to_pred: np.ndarray  # (n_truth_surface,) float64


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a 3-D mask: mask voxels with at least one face neighbour outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = (slice(1, -1),) * 3
    eroded = mask.copy()
    for axis in range(3):
        for lo, hi in ((0, -2), (2, None)):  # the face neighbour before and after along ``axis``
            neighbour = list(inner)
            neighbour[axis] = slice(lo, hi)
            eroded &= padded[tuple(neighbour)]
    return mask & ~eroded


def _bounding_crop(*masks: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of the union of 3-D ``masks`` (at least one non-empty)."""
    lows, highs = [], []
    for mask in masks:
        slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if slices.size:
            plane = mask[slices[0]:slices[-1] + 1].any(axis=0)  # (rows, cols) shadow of the mask
            rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
            lows.append((slices[0], rows[0], cols[0]))
            highs.append((slices[-1], rows[-1], cols[-1]))
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(np.min(lows, axis=0), np.max(highs, axis=0)))


def nearest_distances(points: np.ndarray, targets: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """For each voxel index in ``points`` (N, 3) the distance in mm to the nearest voxel index in ``targets`` (M >= 1).

    The k-d tree finds the nearest target on mm coordinates; the distance is then taken from the integer index
    differences, sqrt(sum((di * spacing_i)²)), so it is exactly translation invariant and a voxel k steps away
    along one axis is exactly k * spacing away (no tie at the NSD tolerance flips with the position in the grid).
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    _, nearest = cKDTree(targets * spacing).query(points * spacing, k=1, workers=-1)
    return np.sqrt(np.sum(((points - targets[nearest]) * spacing) ** 2, axis=1))


def _indices(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 3) voxel indices of the C-order ``flat`` indices (faster than np.argwhere on a large box)."""
    return np.stack(np.unravel_index(flat, shape), axis=1)


def _directed(source: np.ndarray, target: np.ndarray, target_surface: np.ndarray,
              spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from the ``source`` surface voxels (flat indices) to the nearest ``target`` one."""
    out = np.zeros(source.size)  # a voxel on both surfaces is 0 mm away: only the others are looked up
    away = ~target_surface.ravel()[source]
    if away.any():
        shape = target_surface.shape
        out[away] = nearest_distances(_indices(source[away], shape), _indices(target, shape), spacing_mm)
    return out


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float, float]) -> SurfaceDistances:
    """Symmetric surface distances (mm) between two non-empty masks on the same grid, in C order of the voxels.

    Args:
        pred, truth: 3-D boolean masks of equal shape, axes in the order of ``spacing_mm``.
        spacing_mm: voxel size along each axis, e.g. the store's (z, row, col) spacing.

    Raises:
        ValueError: if either mask is empty (metrics.surface_metrics applies the empty-mask conventions first).
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks; empty masks follow docs/metrics.md")
    # everything outside the union's box is background, as outside the array: the surfaces are unchanged, and
    # distances (from index differences) are translation invariant, so only the box is scanned
    crop = _bounding_crop(pred, truth)
    pred_surface, truth_surface = surface_voxels(pred[crop]), surface_voxels(truth[crop])
    pred_flat, truth_flat = np.flatnonzero(pred_surface), np.flatnonzero(truth_surface)
    return SurfaceDistances(_directed(pred_flat, truth_flat, truth_surface, spacing_mm),
                            _directed(truth_flat, pred_flat, pred_surface, spacing_mm))


def hd95(distances: SurfaceDistances) -> float:
    """Robust Hausdorff distance: max of the two directed 95th percentiles (linear interpolation), in mm."""
    return float(max(np.percentile(distances.pred_to_truth, 95), np.percentile(distances.truth_to_pred, 95)))


def nsd(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface Dice: fraction of both surfaces' voxels within ``tolerance_mm`` of the other surface."""
    within = np.count_nonzero(distances.pred_to_truth <= tolerance_mm)
    within += np.count_nonzero(distances.truth_to_pred <= tolerance_mm)
    return float(within / (distances.pred_to_truth.size + distances.truth_to_pred.size))
