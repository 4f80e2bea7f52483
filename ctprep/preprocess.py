"""The one preprocessing path shared by convert and predict: window, reorient, pad with air, resize."""
from __future__ import annotations

from functools import partial

import numpy as np

from ctprep import geometry
from ctprep.geometry import CaseGeometry
from ctprep.store import StoreLayout
from ctprep.window import air_value, apply_window


def preprocess_image(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout) -> tuple[np.ndarray, CaseGeometry]:
    """Source-shaped HU volume -> (stored-layout (Z, S, S) float32 in [0, 1], its geometry record)."""
    geom = geometry.describe(affine, hu.shape, layout.size)
    window = partial(apply_window, window_hu=layout.window_hu, in_place=True)  # on forward's own block copies
    return geometry.forward(hu, geom, fill=air_value(layout.window_hu), transform=window), geom


def preprocess_mask(mask: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Source-shaped mask (any nonzero voxel is lesion) -> stored (Z, S, S) uint8 {0, 1}."""
    return geometry.forward_mask(np.asarray(mask) != 0, geom)


def source_lesion_voxels(mask: np.ndarray, geom: CaseGeometry) -> list[int]:
    """Lesion voxels per stored slice on the source grid (any nonzero voxel is lesion), before any resampling."""
    return geometry.source_lesion_voxels(np.asarray(mask) != 0, geom)


def lesion_pixels(stored_mask: np.ndarray) -> list[int]:
    """Lesion pixel count per stored slice."""
    return stored_mask.reshape(stored_mask.shape[0], -1).sum(axis=1).astype(int).tolist()
