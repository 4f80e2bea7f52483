"""Source <-> stored geometry: canonical RAS, radiological slice layout, pad to square, antialiased resize, exact inverse.

Stored layout (see docs/store-format.md): ``stored[z, row, col] = canonical[X-1-col, Y-1-row, z]`` where
``canonical`` is the volume reoriented to RAS+ (``nibabel.as_closest_canonical``). Slice 0 is the most
inferior slice; row 0 is the most anterior row; column 0 is the patient's right (radiological display).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from nibabel import orientations as nio


@dataclass(frozen=True)
class CaseGeometry:
    """Everything needed to map stored slices back onto the source voxel grid."""

    source_shape: tuple[int, int, int]  # the file's array shape
    source_affine: tuple[tuple[float, ...], ...]  # 4x4 voxel -> world (RAS mm), as in the file
    source_orientation: str  # axis codes of the file, e.g. "LPS"
    canonical_spacing_mm: tuple[float, float, float]  # (x, y, z) voxel sizes after reorientation
    pad: tuple[int, int, int, int]  # (top, bottom, left, right) pixels added to make the plane square
    size: int  # stored in-plane size S

    @property
    def n_slices(self) -> int:
        """Number of axial slices (Z)."""
        x_axis, y_axis, z_axis = _canonical_axes(self.source_affine)
        return self.source_shape[z_axis]

    @property
    def padded_side(self) -> int:
        """Side N of the square plane before resizing."""
        top, bottom, left, right = self.pad
        rows, cols = self.plane_shape
        return rows + top + bottom

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, cols) = (Y, X) of a canonical slice before padding."""
        x_axis, y_axis, _ = _canonical_axes(self.source_affine)
        return self.source_shape[y_axis], self.source_shape[x_axis]

    @property
    def stored_spacing_mm(self) -> tuple[float, float, float]:
        """(z, row, col) spacing of the stored arrays in mm."""
        sx, sy, sz = self.canonical_spacing_mm
        scale = self.padded_side / self.size
        return sz, sy * scale, sx * scale

    def to_attrs(self) -> dict:
        """A JSON-serialisable dict for the store's per-case attributes."""
        attrs = asdict(self)
        attrs["stored_spacing_mm"] = list(self.stored_spacing_mm)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> "CaseGeometry":
        """Rebuild from ``to_attrs()`` output (extra keys are ignored)."""
        return cls(
            source_shape=tuple(int(v) for v in attrs["source_shape"]),
            source_affine=tuple(tuple(float(v) for v in row) for row in attrs["source_affine"]),
            source_orientation=str(attrs["source_orientation"]),
            canonical_spacing_mm=tuple(float(v) for v in attrs["canonical_spacing_mm"]),
            pad=tuple(int(v) for v in attrs["pad"]),
            size=int(attrs["size"]),
        )


def _canonical_axes(affine) -> tuple[int, int, int]:
    """Source array axes that become canonical x, y, z."""
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    axes = [0, 0, 0]
    for src_axis, (target_axis, _flip) in enumerate(ornt):
        axes[int(target_axis)] = src_axis
    return axes[0], axes[1], axes[2]


def describe(affine: np.ndarray, shape: tuple[int, ...], size: int) -> CaseGeometry:
    """Compute the geometry record of a source volume with this affine and shape."""
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nio.io_orientation(affine)
    codes = "".join(nio.ornt2axcodes(ornt))
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    x_axis, y_axis, z_axis = _canonical_axes(affine)
    rows, cols = shape[y_axis], shape[x_axis]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    return CaseGeometry(
        source_shape=tuple(int(v) for v in shape[:3]),
        source_affine=tuple(tuple(float(v) for v in row) for row in affine),
        source_orientation=codes,
        canonical_spacing_mm=(float(voxel_mm[x_axis]), float(voxel_mm[y_axis]), float(voxel_mm[z_axis])),
        pad=(top, side - rows - top, left, side - cols - left),
        size=int(size),
    )


def to_planes(volume: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Reorient a source-shaped volume to stored slice layout (Z, Y, X), without pad or resize."""
    ornt = nio.io_orientation(np.asarray(geom.source_affine))
    canonical = nio.apply_orientation(volume, ornt)  # (X, Y, Z) RAS+
    return np.ascontiguousarray(canonical[::-1, ::-1, :].transpose(2, 1, 0))


def from_planes(planes: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Inverse of ``to_planes``: (Z, Y, X) stored layout back to the source array's axes."""
    canonical = planes.transpose(2, 1, 0)[::-1, ::-1, :]
    ornt = nio.io_orientation(np.asarray(geom.source_affine))
    back = nio.ornt_transform(nio.axcodes2ornt("RAS"), ornt)
    return np.ascontiguousarray(nio.apply_orientation(canonical, back))


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased linear (triangle) resize with pixel-centre alignment.

    When shrinking, the triangle widens by n_in / n_out so every source pixel contributes
    (as PIL's and torch's ``antialias=True`` bilinear); rows are normalised to sum to 1.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    taps = np.arange(n_in)
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


def pad_square(planes: np.ndarray, pad: tuple[int, int, int, int], fill: float) -> np.ndarray:
    """Pad (Z, rows, cols) planes to (Z, N, N) with ``fill``."""
    top, bottom, left, right = pad
    return np.pad(planes, ((0, 0), (top, bottom), (left, right)), constant_values=fill)


def resize_planes(planes: np.ndarray, n_out: int) -> np.ndarray:
    """Resize square (Z, N, N) float planes to (Z, n_out, n_out)."""
    n_in = planes.shape[-1]
    if n_in == n_out:
        return planes.astype(np.float32, copy=False)
    weights = resize_matrix(n_in, n_out)
    return weights @ planes.astype(np.float32, copy=False) @ weights.T


def forward(volume: np.ndarray, geom: CaseGeometry, fill: float) -> np.ndarray:
    """Source-shaped float volume -> stored (Z, S, S) float32: reorient, pad with ``fill``, resize."""
    planes = to_planes(volume, geom).astype(np.float32, copy=False)
    return resize_planes(pad_square(planes, geom.pad, fill), geom.size)


def forward_mask(mask: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Source-shaped boolean mask -> stored (Z, S, S) uint8 {0, 1}, aligned with ``forward``."""
    resized = forward(mask.astype(np.float32), geom, fill=0.0)
    return (resized >= 0.5).astype(np.uint8)


def inverse(stored: np.ndarray, geom: CaseGeometry) -> np.ndarray:
    """Stored (Z, S, S) floats (e.g. probabilities) -> source-shaped float32 on the source grid."""
    top, bottom, left, right = geom.pad
    side = geom.padded_side
    planes = resize_planes(np.asarray(stored, dtype=np.float32), side)
    planes = planes[:, top : side - bottom, left : side - right]
    return from_planes(planes, geom)


def inverse_mask(stored: np.ndarray, geom: CaseGeometry, threshold: float = 0.5) -> np.ndarray:
    """Stored (Z, S, S) mask or probabilities -> source-shaped uint8 {0, 1} mask."""
    return (inverse(stored, geom) >= threshold).astype(np.uint8)
