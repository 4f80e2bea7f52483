"""Synthetic chest anatomy for the demo data: one patient's drawn parameters and the HU of each axial slice.

Coordinates are millimetres in RAS+ (x to the patient's right, y anterior, z superior, z = 0 at the most
inferior slice). A slice is a 2-D array indexed ``[row, col] = [y, x]`` on the scanner's pixel grid, so a
(Z, Y, X) C-order stack is the NIfTI (X, Y, Z) volume in Fortran order, written without a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LIVER_HU = 60.0
LUNG_HU = -850.0
TABLE_HU = 150.0
SLICE_MM_CHOICES = (1.25, 1.5, 2.0, 2.5, 3.0, 5.0)  # reconstruction thicknesses seen in COVID-19 CT sets
SLICES_RANGE = (40, 200)
REFERENCE_SIZE = 512  # pixel spacing is drawn as 0.6-0.9 mm at this matrix and scaled for smaller ones


@dataclass(frozen=True)
class Patient:
    """Everything drawn for one patient; all lengths in mm."""

    size: int  # in-plane matrix
    pixel_mm: float
    slice_mm: float
    n_slices: int
    body_a_mm: float  # body ellipse semi-axis, left-right
    body_b_mm: float  # body ellipse semi-axis, anterior-posterior
    fat_mm: float  # subcutaneous fat thickness
    lung_top_mm: float  # apex
    lung_bottom_mm: float  # lowest costophrenic recess
    dome_top_mm: tuple[float, float]  # diaphragm dome height, (right, left)
    carina_mm: float
    rib_period_mm: float
    rib_phase_mm: float
    vertebra_mm: float  # vertebra + disc height
    vertebra_phase_mm: float

    @property
    def inner_a_mm(self) -> float:
        """Left-right semi-axis of the body inside the fat layer."""
        return self.body_a_mm - self.fat_mm

    @property
    def inner_b_mm(self) -> float:
        """Anterior-posterior semi-axis of the body inside the fat layer."""
        return self.body_b_mm - self.fat_mm

    @property
    def spine_y_mm(self) -> float:
        """Centre of the vertebral body (posterior midline)."""
        return -0.62 * self.inner_b_mm

    def z_mm(self, index: np.ndarray | int) -> np.ndarray:
        """Height of slice centres above the most inferior slice centre."""
        return np.asarray(index, dtype=np.float64) * self.slice_mm


def draw_patient(rng: np.random.Generator, size: int, max_slices: int | None) -> Patient:
    """Draw one patient: body habitus, field of view, slice thickness and the heights of the chest organs."""
    body_a = rng.uniform(140.0, 180.0)
    fov_mm = float(np.clip(2 * body_a / rng.uniform(0.80, 0.92), 0.6 * REFERENCE_SIZE, 0.9 * REFERENCE_SIZE))
    length, slice_mm = _draw_scan_length(rng)
    n_slices = int(round(length / slice_mm))
    length = n_slices * slice_mm
    if max_slices is not None and n_slices > max_slices:  # keep the whole chest, thicken the slices
        n_slices, slice_mm = max_slices, length / max_slices
    top = length - rng.uniform(0.06, 0.14) * length
    bottom = rng.uniform(0.08, 0.20) * length
    dome_right = bottom + rng.uniform(0.22, 0.32) * (top - bottom)
    return Patient(
        size=size, pixel_mm=fov_mm / size, slice_mm=float(slice_mm), n_slices=n_slices,
        body_a_mm=body_a, body_b_mm=body_a * rng.uniform(0.62, 0.74), fat_mm=rng.uniform(6.0, 18.0),
        lung_top_mm=top, lung_bottom_mm=bottom,
        dome_top_mm=(dome_right, dome_right - rng.uniform(5.0, 20.0)),
        carina_mm=bottom + rng.uniform(0.55, 0.68) * (top - bottom),
        rib_period_mm=rng.uniform(26.0, 34.0), rib_phase_mm=rng.uniform(0.0, 34.0),
        vertebra_mm=rng.uniform(24.0, 30.0), vertebra_phase_mm=rng.uniform(0.0, 30.0),
    )


def _draw_scan_length(rng: np.random.Generator) -> tuple[float, float]:
    """Scan length (mm) and a slice thickness that gives 40-200 slices over it."""
    length = rng.uniform(240.0, 340.0)
    lo, hi = SLICES_RANGE
    fits = [t for t in SLICE_MM_CHOICES if lo <= length / t <= hi]
    return length, float(rng.choice(fits))


def pixel_centres_mm(p: Patient) -> np.ndarray:
    """Millimetre coordinate of each pixel centre along a row or column (the isocentre at 0)."""
    return (np.arange(p.size) - (p.size - 1) / 2) * p.pixel_mm


def to_pixel(p: Patient, mm: np.ndarray | float) -> np.ndarray:
    """Fractional pixel index of a millimetre coordinate."""
    return np.asarray(mm) / p.pixel_mm + (p.size - 1) / 2


def lung_frame(p: Patient, side: int, z_mm: np.ndarray | float) -> tuple[np.ndarray, ...]:
    """Ellipse (cx, cy, ax, ay) in mm of lung ``side`` (0 right, 1 left) at heights ``z_mm``; 0-sized outside.

    Lesions and vessels are placed in lung-relative coordinates (u, v) in the unit disk and mapped with
    ``x = cx + u * ax``, ``y = cy + v * ay``, so they follow the lung as it grows from the apex.
    """
    z = np.asarray(z_mm, dtype=np.float64)
    t = np.clip((p.lung_top_mm - z) / (p.lung_top_mm - p.lung_bottom_mm), 0.0, 1.0)
    scale = np.minimum(1.0, t / 0.35) ** 0.6 * (z >= p.lung_bottom_mm)
    sign = 1.0 if side == 0 else -1.0
    ax = 0.36 * p.inner_a_mm * scale * (1.0 if side == 0 else 0.92)
    ay = 0.60 * p.inner_b_mm * scale
    cx = np.full_like(z, sign * 0.47 * p.inner_a_mm)
    cy = np.full_like(z, 0.02 * p.inner_b_mm)
    return cx, cy, ax, ay


def dome_fraction(p: Patient, side: int, z_mm: float) -> float:
    """How much of the lung ellipse the diaphragm dome fills at this height (0 above the dome, 1 at the base)."""
    top = p.dome_top_mm[side]
    return float(np.sqrt(np.clip((top - z_mm) / (top - p.lung_bottom_mm), 0.0, 1.0)))


def heart_scale(p: Patient, z_mm: float) -> float:
    """Size of the heart's cross-section relative to its widest: full down to the diaphragm, rounded above."""
    widest = p.dome_top_mm[1] + 0.3 * (p.carina_mm - p.dome_top_mm[1])
    rise = max(z_mm - widest, 0.0) / (p.carina_mm + 10.0 - widest)
    return float(np.sqrt(max(0.0, 1.0 - rise ** 2)))


class SliceRenderer:
    """Renders the body, lungs and bones of one patient slice by slice with a few cached 2-D maps."""

    def __init__(self, p: Patient, rng: np.random.Generator) -> None:
        self.p = p
        mm = pixel_centres_mm(p).astype(np.float32)
        self.x_mm, self.y_mm = mm[None, :], mm[:, None]
        self.base = self._base_image()
        self.lung_hu = (LUNG_HU + 45.0 * np.clip(-self.y_mm / p.inner_b_mm, -1, 1)  # dependent lung denser
                        + np.zeros_like(self.x_mm)).astype(np.float32)
        self.rib_band, self.rib_angle = self._rib_band()
        self.spine_box, self.spine_bone, self.spine_disc = self._spine_patches()
        self.lung_allowed = self._lung_allowed()
        self.lung_texture = self._smooth_textures(rng, count=4, cells=12, sd_hu=15.0)

    def _ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        """Boolean image of an axis-aligned ellipse (semi-axes in mm)."""
        if ax <= 0 or ay <= 0:
            return np.zeros((self.p.size, self.p.size), dtype=bool)
        return ((self.x_mm - cx) / ax) ** 2 + ((self.y_mm - cy) / ay) ** 2 <= 1.0

    def _base_image(self) -> np.ndarray:
        """Air, the patient table, subcutaneous fat and soft tissue: the same on every slice."""
        p = self.p
        img = np.full((p.size, p.size), AIR_HU, dtype=np.float32)
        table_y = -p.body_b_mm - 4.0
        table = (self.y_mm < table_y) & (self.y_mm > table_y - 8.0) & (np.abs(self.x_mm) < 0.85 * p.body_a_mm)
        img[table] = TABLE_HU
        img[self._ellipse(0.0, 0.0, p.body_a_mm, p.body_b_mm)] = FAT_HU
        img[self._ellipse(0.0, 0.0, p.inner_a_mm, p.inner_b_mm)] = SOFT_TISSUE_HU
        return img

    def _rib_band(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the ring just inside the fat where ribs run, and each pixel's angle from the spine."""
        p = self.p
        rho = np.sqrt((self.x_mm / p.inner_a_mm) ** 2 + (self.y_mm / p.inner_b_mm) ** 2)
        angle = np.abs(np.arctan2(self.x_mm / p.inner_a_mm, -self.y_mm / p.inner_b_mm))  # 0 at the spine
        ring = (rho > 0.86) & (rho < 0.95) & (angle > 0.45) & (angle < np.pi - 0.35)
        idx = np.flatnonzero(ring)
        return idx, angle.ravel()[idx]

    def _spine_patches(self) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Box around the spine and its HU at a vertebra level and at a disc level (NaN = not spine)."""
        p = self.p
        r = 0.12 * p.inner_a_mm  # vertebral body radius
        y0 = p.spine_y_mm
        dist = np.sqrt(self.x_mm ** 2 + (self.y_mm - y0) ** 2)
        canal_y = y0 - r - 0.45 * r
        canal = np.sqrt(self.x_mm ** 2 + (self.y_mm - canal_y) ** 2)
        process = (np.abs(self.x_mm) < 0.25 * r) & (self.y_mm < canal_y) & (self.y_mm > canal_y - 1.6 * r)
        bone = np.full((p.size, p.size), np.nan, dtype=np.float32)
        bone[(canal < 0.75 * r) | process] = 650.0  # lamina and spinous process
        bone[canal < 0.45 * r] = 30.0  # spinal canal
        bone[dist <= r] = 420.0  # cancellous vertebral body
        bone[(dist <= r) & (dist > r - max(1.5, 1.2 * p.pixel_mm))] = 950.0  # cortex
        disc = bone.copy()
        disc[dist <= r] = 80.0
        rows, cols = np.nonzero(~np.isnan(bone))
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        return box, bone[box], disc[box]

    def _lung_allowed(self) -> np.ndarray:
        """Pixels the lungs may occupy: everywhere but the spine and the trachea with a few mm around them."""
        allowed = np.ones((self.p.size, self.p.size), dtype=bool)
        allowed[self.spine_box] = np.isnan(self.spine_bone)
        allowed &= ~self._ellipse(0.0, 0.1 * self.p.inner_b_mm, 14.0, 14.0)
        return allowed

    def lung_mask(self, side: int, z_mm: float) -> tuple[np.ndarray, tuple[slice, slice]] | None:
        """Boolean lung cross-section of ``side`` inside its bounding box, or None above/below the lung."""
        p = self.p
        cx, cy, ax, ay = (float(v) for v in lung_frame(p, side, z_mm))
        if ax * ay <= 0:
            return None
        box = self.box_of(cx, cy, ax, ay)
        x, y = self.x_mm[:, box[1]], self.y_mm[box[0], :]
        lung = (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & self.lung_allowed[box]
        dome = dome_fraction(p, side, z_mm)
        if dome > 0:  # the diaphragm rises into the base, leaving the posterior recess last
            lung &= ((x - cx) / (1.03 * dome * ax)) ** 2 + ((y - cy - 0.2 * ay) / (dome * ay)) ** 2 > 1.0
        heart = heart_scale(p, z_mm)
        if side == 1 and heart > 0:  # cardiac notch
            a, b = p.inner_a_mm * heart, p.inner_b_mm * heart
            lung &= ((x + 0.05 * p.inner_a_mm) / (0.42 * a)) ** 2 + ((y - 0.3 * p.inner_b_mm) / (0.5 * b)) ** 2 > 1.0
        return lung, box

    def box_of(self, cx: float, cy: float, ax: float, ay: float) -> tuple[slice, slice]:
        """Pixel box (rows, cols) holding an ellipse in mm, clipped to the image."""
        p = self.p
        c0, c1 = to_pixel(p, cx - ax), to_pixel(p, cx + ax)
        r0, r1 = to_pixel(p, cy - ay), to_pixel(p, cy + ay)
        clip = lambda v: int(np.clip(v, 0, p.size))  # noqa: E731
        return slice(clip(np.floor(r0)), clip(np.ceil(r1) + 1)), slice(clip(np.floor(c0)), clip(np.ceil(c1) + 1))

    def paint_lungs(self, img: np.ndarray, z_mm: float, lungs: list) -> None:
        """Fill the lung cross-sections with parenchyma (about -850 HU, denser posteriorly)."""
        t = z_mm / 40.0
        k, frac = int(t) % len(self.lung_texture), np.float32(t - int(t))
        textures = self.lung_texture[k], self.lung_texture[(k + 1) % len(self.lung_texture)]
        for found in lungs:
            if found is not None:
                lung, box = found
                texture = textures[0][box] * (1 - frac) + textures[1][box] * frac
                img[box][lung] = (self.lung_hu[box] + texture)[lung]

    def _smooth_textures(self, rng: np.random.Generator, count: int, cells: int, sd_hu: float) -> np.ndarray:
        """``count`` smooth random images: a coarse normal grid upsampled bilinearly to the matrix."""
        pos = np.linspace(0, cells - 1, self.p.size)
        lower = np.minimum(pos.astype(int), cells - 2)
        weights = np.zeros((self.p.size, cells), dtype=np.float32)
        weights[np.arange(self.p.size), lower] = 1 - (pos - lower)
        weights[np.arange(self.p.size), lower + 1] = pos - lower
        grids = rng.normal(0.0, sd_hu, size=(count, cells, cells)).astype(np.float32)
        return np.stack([weights @ g @ weights.T for g in grids])

    def paint_bones(self, img: np.ndarray, z_mm: float) -> None:
        """Ribs in the chest wall, the sternum and a vertebra (or disc) with its posterior elements."""
        p = self.p
        if p.lung_bottom_mm - 25.0 < z_mm < p.lung_top_mm + 10.0:
            phase = (z_mm + p.rib_phase_mm + 30.0 * self.rib_angle) / p.rib_period_mm
            rib = self.rib_band[(phase - np.floor(phase)) < 0.36]
            img.ravel()[rib] = 700.0
            self.paint_ellipse(img, 0.0, 0.9 * p.inner_b_mm, 0.07 * p.inner_a_mm, 0.06 * p.inner_b_mm, 550.0)
        level = ((z_mm + p.vertebra_phase_mm) % p.vertebra_mm) / p.vertebra_mm
        patch = self.spine_disc if level < 0.2 else self.spine_bone
        target = img[self.spine_box]
        np.copyto(target, patch, where=~np.isnan(patch))

    def paint_ellipse(self, img: np.ndarray, cx: float, cy: float, ax: float, ay: float, hu: float,
                      only_over: float | None = None) -> None:
        """Set an ellipse (mm) to ``hu`` (only over pixels equal to ``only_over`` if given), within its box."""
        box = self.box_of(cx, cy, ax, ay)
        inside = ((self.x_mm[:, box[1]] - cx) / ax) ** 2 + ((self.y_mm[box[0], :] - cy) / ay) ** 2 <= 1.0
        if only_over is not None:
            inside &= img[box] == only_over
        img[box][inside] = hu

    def paint_airway(self, img: np.ndarray, z_mm: float) -> None:
        """The trachea above the carina: an air-filled tube in the upper mediastinum."""
        p = self.p
        if z_mm >= p.carina_mm:
            r = max(8.0, 0.8 * p.pixel_mm)
            y0 = 0.1 * p.inner_b_mm
            self.paint_ellipse(img, 0.0, y0, r + 2.0, r + 2.0, SOFT_TISSUE_HU)
            self.paint_ellipse(img, 0.0, y0, r, r, AIR_HU)

    def paint_liver(self, img: np.ndarray, z_mm: float) -> None:
        """Liver under the right hemidiaphragm: slightly denser soft tissue."""
        p = self.p
        if z_mm < p.dome_top_mm[0]:
            cx, cy, ax, ay = (float(v) for v in lung_frame(p, 0, max(z_mm, p.lung_bottom_mm + 1e-3)))
            ax, ay = max(ax, 0.3 * p.inner_a_mm), max(ay, 0.5 * p.inner_b_mm)
            self.paint_ellipse(img, cx - 0.1 * ax, cy, 1.1 * ax, ay, LIVER_HU, only_over=SOFT_TISSUE_HU)
