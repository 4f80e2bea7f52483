"""One synthetic chest CT: a drawn patient rendered slice by slice into HU and a lesion mask."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctprep.demo.anatomy import Patient, SliceRenderer, draw_patient
from ctprep.demo.lesions import EASY_LESIONS, Lesion, burden_stratum, draw_lesions, paint_lesions
from ctprep.demo.realistic import (DIFFICULTIES, NOISE_FACTOR, REALISTIC_LESIONS, degrade, draw_realism,
                                   paint_mimics, thicken)
from ctprep.demo.vessels import draw_vessel_points, paint_vessels

NOISE_HU = 20.0
NOISE_BANK = 8  # noise slices drawn per case; each slice adds one, circularly shifted by a random offset


@dataclass(frozen=True)
class Phantom:
    """A rendered case: HU as int16 (Z, Y, X) in RAS order, the uint8 {0, 1} mask, and what was drawn."""

    patient: Patient
    hu: np.ndarray
    mask: np.ndarray
    lesions: list[Lesion]
    lesion_voxels: np.ndarray  # voxels each lesion ended up with after clipping to the lungs


def make_phantom(seed: int, index: int, size: int, max_slices: int | None, difficulty: str = "easy") -> Phantom:
    """Draw and render case ``index`` of the set made with ``seed``; independent of every other case.

    ``difficulty="realistic"`` adds what makes real COVID-19 CT hard (see ``realistic``) from a fifth random
    stream, leaving the other four, and so every easy case, unchanged.
    """
    assert difficulty in DIFFICULTIES, difficulty  # DemoConfig validates user input
    anatomy_rng, vessel_rng, lesion_rng, noise_rng, realism_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(5))
    realistic = difficulty == "realistic"
    p = draw_patient(anatomy_rng, size, max_slices)
    if realistic:
        p = thicken(realism_rng, p)
    renderer = SliceRenderer(p, anatomy_rng)
    vessels = draw_vessel_points(vessel_rng, p)
    style = REALISTIC_LESIONS if realistic else EASY_LESIONS
    lesions = draw_lesions(lesion_rng, p, burden_stratum(seed, index), style)
    realism = draw_realism(realism_rng, p, renderer) if realistic else None
    hu = np.empty((p.n_slices, size, size), dtype=np.int16)
    mask = np.zeros((p.n_slices, size, size), dtype=np.uint8)
    voxels = np.zeros(len(lesions), dtype=np.int64)
    img = np.empty((size, size), dtype=np.float32)
    noise = noise_rng.standard_normal((NOISE_BANK, size, size), dtype=np.float32) * np.float32(NOISE_HU)
    if realistic:
        noise *= np.float32(NOISE_FACTOR)
    shifts = noise_rng.integers(0, size, (p.n_slices, 2))
    for k in range(p.n_slices):
        z_mm = float(p.z_mm(k))
        np.copyto(img, renderer.base)
        lung_any = _paint_chest(renderer, img, z_mm)
        paint_lesions(img, mask[k], lung_any, renderer, lesions, z_mm, voxels, style)
        paint_vessels(img, lung_any, p, vessels, z_mm)
        if realism is not None:
            paint_mimics(img, lung_any, renderer, realism, z_mm)
        renderer.paint_bones(img, z_mm)
        renderer.paint_airway(img, z_mm)
        if realism is not None:
            degrade(img, realism, k)
        img += np.roll(noise[k % NOISE_BANK], tuple(shifts[k]), axis=(0, 1))  # 10x cheaper than fresh draws
        np.rint(img, out=img)
        np.clip(img, -1024.0, 3071.0, out=img)
        hu[k] = img
    return Phantom(patient=p, hu=hu, mask=mask, lesions=lesions, lesion_voxels=voxels)


def _paint_chest(r: SliceRenderer, img: np.ndarray, z_mm: float) -> np.ndarray:
    """Liver and lungs of one slice; returns the boolean lung mask of the whole slice."""
    r.paint_liver(img, z_mm)
    lungs = [r.lung_mask(side, z_mm) for side in (0, 1)]
    r.paint_lungs(img, z_mm, lungs)
    lung_any = np.zeros(img.shape, dtype=bool)
    for found in lungs:
        if found is not None:
            lung_any[found[1]] |= found[0]
    return lung_any
