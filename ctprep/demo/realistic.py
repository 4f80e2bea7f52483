"""`--difficulty realistic`: what makes real COVID-19 CT hard, added on top of the easy phantom.

Thicker slices for some patients, look-alikes that are not lesions (a vessel cut across or a bronchial wall,
visible on one slice only), partial-volume blur, beam-hardening streaks and cupping, and more noise. The
lesions' own changes (lower contrast, soft edges, crazy paving, contact with the pleura and the mediastinum)
are a ``LesionStyle`` in ``lesions``. Everything here draws from its own random stream, so the easy set stays
byte-identical.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctprep.demo.anatomy import AIR_HU, Patient, SliceRenderer, lung_frame
from ctprep.demo.lesions import LesionStyle

DIFFICULTIES = ("easy", "realistic")

REALISTIC_LESIONS = LesionStyle(
    ggo_hu=(-760.0, -560.0),  # faint ground glass: 90-290 HU above the lung instead of 150-550
    consolidation_hu=(-350.0, -50.0),
    ggo_p=0.75,
    halo={"ggo": 0.6, "consolidation": 0.3},  # wide unlabeled fade outside the mask
    soft_core=0.35,  # and a ramp inside it: the mask's edge sits on a soft gradient, not a step
    paving_hu=90.0,  # crazy paving: a reticular web of thickened septa over ground glass
    pleural_p=0.45,  # lesions placed against the chest wall or the mediastinum, clipped by the lung
)
THICK_P = 0.35  # share of patients scanned with thick slices
THICK_MM = 5.0  # their slices are at least this thick (and at least 1.6x the drawn thickness)
MIMICS_PER_LITRE = 14.0  # vessel cross-sections and bronchi that look like small lesions on one slice
NOISE_FACTOR = 1.75  # sigma 35 HU instead of 20
BLUR_MM = 1.0  # in-plane partial-volume blur (Gaussian sigma)
STREAK_BANK = 6  # streak images drawn per case; each slice takes one
STREAK_HU = (30.0, 90.0)  # amplitude of one beam-hardening streak
CUPPING_HU = 30.0  # the body's centre reads this much lower than its edge


@dataclass(frozen=True)
class Realism:
    """What the realistic difficulty drew for one patient: look-alikes and the artefact images."""

    mimics: np.ndarray  # (N, 6): x_mm, y_mm, z_mm, radius_mm, hu, is_bronchus (sorted by z)
    artefacts: np.ndarray  # (STREAK_BANK, size, size) float32: streaks + cupping, 0 outside the body
    blur_px: float


def thicken(rng: np.random.Generator, p: Patient) -> Patient:
    """Some patients get thick slices (the same chest over fewer slices), as older or low-dose protocols."""
    if rng.random() >= THICK_P:
        return p
    length = p.n_slices * p.slice_mm
    n_slices = max(4, int(np.floor(length / max(THICK_MM, 1.6 * p.slice_mm))))
    return dataclasses.replace(p, n_slices=n_slices, slice_mm=length / n_slices)


def draw_realism(rng: np.random.Generator, p: Patient, renderer: SliceRenderer) -> Realism:
    """Draw the look-alikes and the artefact bank of one patient."""
    return Realism(mimics=_draw_mimics(rng, p), artefacts=_artefacts(rng, p, renderer),
                   blur_px=BLUR_MM / p.pixel_mm)


def _draw_mimics(rng: np.random.Generator, p: Patient) -> np.ndarray:
    """Small round look-alikes spread over both lungs: 2/3 vessels seen end-on, 1/3 bronchi with walls."""
    height = p.lung_top_mm - p.lung_bottom_mm
    _, _, ax, ay = (float(v) for v in lung_frame(p, 0, p.carina_mm))
    litres = 2 * (4 / 3) * ax * ay * height / 2 / 1e6
    n = int(rng.poisson(MIMICS_PER_LITRE * litres))
    side = rng.integers(0, 2, n)
    z = p.lung_bottom_mm + rng.uniform(0.05, 0.95, n) * height
    r, angle = np.sqrt(rng.uniform(0.0, 0.85, n)), rng.uniform(0, 2 * np.pi, n)
    cx, cy, fax, fay = (np.where(side == 0, a, b) for a, b in zip(lung_frame(p, 0, z), lung_frame(p, 1, z)))
    bronchus = rng.random(n) < 1 / 3
    radius = rng.uniform(1.5, 4.0, n)
    hu = np.where(bronchus, rng.uniform(-150.0, 0.0, n), rng.uniform(-600.0, -250.0, n))
    out = np.column_stack([cx + r * np.cos(angle) * fax, cy + r * np.sin(angle) * fay, z, radius, hu, bronchus])
    return out[np.argsort(out[:, 2], kind="stable")]


def _artefacts(rng: np.random.Generator, p: Patient, renderer: SliceRenderer) -> np.ndarray:
    """Beam-hardening streaks (bright and dark bands through the spine and ribs) plus cupping, inside the body."""
    x, y = renderer.x_mm, renderer.y_mm
    body = ((x / p.body_a_mm) ** 2 + (y / p.body_b_mm) ** 2)
    cupping = -CUPPING_HU * np.clip(1.0 - body, 0.0, 1.0)
    bank = np.empty((STREAK_BANK, p.size, p.size), dtype=np.float32)
    for k in range(STREAK_BANK):
        img = cupping.copy()
        for _ in range(int(rng.integers(2, 6))):
            angle = rng.uniform(0, np.pi)  # a line through the spine or a rib, at any angle
            x0 = rng.uniform(-0.8, 0.8) * p.inner_a_mm
            y0 = p.spine_y_mm if rng.random() < 0.5 else rng.uniform(-0.8, 0.8) * p.inner_b_mm
            dist = (x - x0) * np.sin(angle) - (y - y0) * np.cos(angle)
            width = rng.uniform(1.0, 3.0)
            sign = 1.0 if rng.random() < 0.4 else -1.0  # mostly dark bands between dense structures
            img += sign * rng.uniform(*STREAK_HU) * np.exp(-(dist / width) ** 2)
        bank[k] = img * (body <= 1.0)
    return bank


def paint_mimics(img: np.ndarray, lung_any: np.ndarray, renderer: SliceRenderer, realism: Realism,
                 z_mm: float) -> None:
    """Stamp the look-alikes whose centre lies in this slice's slab (so each shows on one slice), lung only."""
    p = renderer.p
    m = realism.mimics
    lo, hi = np.searchsorted(m[:, 2], [z_mm - p.slice_mm / 2, z_mm + p.slice_mm / 2])
    for x0, y0, _, radius, hu, bronchus in m[lo:hi]:
        box = renderer.box_of(x0, y0, radius + 1.0, radius + 1.0)
        d = np.sqrt((renderer.x_mm[:, box[1]] - x0) ** 2 + (renderer.y_mm[box[0], :] - y0) ** 2) / radius
        cover = np.clip(1.5 - d, 0.0, 1.0) * lung_any[box]  # soft disk, edge at d = 1..1.5
        region = img[box]
        region += cover * (hu - region)
        if bronchus:  # air lumen inside the wall
            lumen = np.clip(1.5 - d / 0.55, 0.0, 1.0) * lung_any[box]
            region += lumen * (AIR_HU + 50.0 - region)


def degrade(img: np.ndarray, realism: Realism, k: int) -> None:
    """Partial-volume blur and the artefacts of slice ``k`` (in place, before the noise)."""
    ndimage.gaussian_filter(img, realism.blur_px, output=img, mode="nearest")
    img += realism.artefacts[k % STREAK_BANK]
