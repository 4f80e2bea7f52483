"""The store's preprocessing in numpy: window, reorient, pad with air, resize (convert writes exactly this).

One documented pair: `ctmodel predict` runs the same arithmetic as torch ops (ctmodel/torch_preprocess.py) so
a scan stays on the GPU; tests/ctmodel/test_torch_preprocess.py holds ``prepare_input`` and that copy to one step
of the stored dtype (1/255 uint8, 1/1024 float16) on under 1 % of pixels, identical elsewhere.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ctprep import geometry
from ctprep.geometry import CaseGeometry
from ctprep.store import StoreLayout
from ctprep.window import air_value, apply_window, decode, encode


def preprocess_image(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout) -> tuple[np.ndarray, CaseGeometry]:
    """Source-shaped HU volume -> (stored-layout (Z, S, S) float32 in [0, 1], its geometry record)."""
    geom = geometry.describe(affine, hu.shape, layout.size)
    window = partial(apply_window, window_hu=layout.window_hu, in_place=True)  # on forward's own block copies
    return geometry.forward(hu, geom, fill=air_value(layout.window_hu), transform=window), geom


def prepare_input(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout) -> tuple[np.ndarray, CaseGeometry]:
    """The network's input exactly as the store would hold it: preprocess, then the dtype's encode/decode round trip."""
    unit, geom = preprocess_image(hu, affine, layout)
    return decode(encode(unit, layout.dtype)), geom


def preprocess_mask(mask: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Source-shaped mask (any nonzero voxel is lesion) -> stored (Z, S, S) uint8 {0, 1}."""
    return geometry.forward_mask(np.asarray(mask) != 0, geom)


def source_lesion_voxels(mask: np.ndarray, geom: CaseGeometry) -> list[int]:
    """Lesion voxels per stored slice on the source grid (any nonzero voxel is lesion), before any resampling."""
    return geometry.source_lesion_voxels(np.asarray(mask) != 0, geom)


def lesion_pixels(stored_mask: np.ndarray) -> list[int]:
    """Lesion pixel count per stored slice."""
    return stored_mask.reshape(stored_mask.shape[0], -1).sum(axis=1).astype(int).tolist()
