"""COVID-19-like lesions for the demo data: irregular ground-glass and consolidation blobs inside the lungs.

A lesion is a chain of overlapping ellipsoids along a short path in lung-relative coordinates, its edge
perturbed by a few smooth random waves, and clipped to the lung on every slice. The lesions of one patient
cover non-overlapping height intervals whose total is drawn per patient, so patients range from a few lesion
slices to about half the scan, as in the source study's data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctprep.demo.anatomy import Patient, SliceRenderer, lung_frame

GGO_HU = (-700.0, -300.0)
CONSOLIDATION_HU = (-100.0, 50.0)
COVERAGE = (0.02, 0.72)  # fraction of the lung height covered by lesions, drawn per patient
BURDEN_SKEW = 0.7  # < 1: more patients near the heavy end, a tail of light ones
STRATA = 12  # any 12 consecutive cases of a set span the whole COVERAGE range once
NO_LESION_P = 0.5  # chance that the case in the lowest stratum has no lesion at all
BLOB_SPACING_MM = 22.0
HALO = {"ggo": 0.25, "consolidation": 0.08}  # width of the unlabeled fading edge, in units of the blob level


@dataclass(frozen=True)
class Lesion:
    """One lesion: its kind, mean HU, lung side (0 right, 1 left), ellipsoid chain and edge waves."""

    kind: str  # "ggo" or "consolidation"
    hu: float
    side: int
    blobs: np.ndarray  # (K, 6): u, v (lung-relative centre), z_mm, ru, rv (lung-relative radii), rz_mm
    waves: np.ndarray  # (M, 5): kx, ky, kz (rad/mm), phase, amplitude


def burden_stratum(seed: int, index: int) -> int:
    """Which of the STRATA lesion-burden bands case ``index`` falls in: a per-seed shuffle, repeated."""
    return int(np.random.default_rng([seed, 2**32 + 1]).permutation(STRATA)[index % STRATA])


def draw_lesions(rng: np.random.Generator, p: Patient, stratum: int) -> list[Lesion]:
    """Draw 0-6 lesions on non-overlapping height intervals of the lungs, with a burden set by ``stratum``.

    Stratifying the burden keeps a set's overall empty:lesion ratio close to the target (about 1.75) while
    single patients range from a few lesion slices (some with none) to about half of the scan.
    """
    if stratum == 0 and rng.random() < NO_LESION_P:
        return []
    lo, hi = COVERAGE
    coverage = lo + (hi - lo) * ((stratum + rng.uniform(0.2, 0.8)) / STRATA) ** BURDEN_SKEW
    n = int(np.clip(round(coverage * 7 + rng.uniform(-1.5, 1.5)), 1, 6))
    return [_draw_lesion(rng, p, z0, z1) for z0, z1 in _z_intervals(rng, p, coverage, n)]


def _z_intervals(rng: np.random.Generator, p: Patient, coverage: float, n: int) -> list[tuple[float, float]]:
    """``n`` disjoint height intervals inside the lungs whose lengths add up to ``coverage`` of the lung height."""
    margin = 0.04 * (p.lung_top_mm - p.lung_bottom_mm)
    lo, hi = p.lung_bottom_mm + margin, p.lung_top_mm - margin
    lengths = np.maximum(rng.dirichlet(np.full(n, 2.0)) * coverage * (hi - lo), max(2 * p.slice_mm, 6.0))
    gaps = rng.dirichlet(np.ones(n + 1)) * max(hi - lo - lengths.sum(), 0.0)
    starts = lo + np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    return [(float(s), float(s + length)) for s, length in zip(starts, lengths)]


def _draw_lesion(rng: np.random.Generator, p: Patient, z0: float, z1: float) -> Lesion:
    """One lesion spanning heights z0..z1: mostly peripheral and posterior, as COVID-19 opacities are."""
    ggo = rng.random() < 0.65
    k = int(np.clip(np.ceil((z1 - z0) / BLOB_SPACING_MM), 1, 12))
    spacing = (z1 - z0) / k
    theta = rng.uniform(-np.pi, 0.0) if rng.random() < 0.75 else rng.uniform(-np.pi, np.pi)
    theta = theta + np.cumsum(rng.normal(0.0, 0.25, k))
    radius = np.clip(rng.uniform(0.45, 0.75) + np.cumsum(rng.normal(0.0, 0.05, k)), 0.2, 0.8)
    size = rng.uniform(0.14, 0.34) if ggo else rng.uniform(0.10, 0.24)
    blobs = np.column_stack([
        radius * np.cos(theta), radius * np.sin(theta), z0 + spacing * (np.arange(k) + 0.5),
        size * rng.uniform(0.7, 1.3, k), size * rng.uniform(0.7, 1.3, k), np.full(k, 0.75 * spacing),
    ])
    return Lesion(kind="ggo" if ggo else "consolidation", hu=float(rng.uniform(*(GGO_HU if ggo else CONSOLIDATION_HU))),
                  side=int(rng.integers(2)), blobs=blobs, waves=_waves(rng))


def _waves(rng: np.random.Generator, count: int = 6) -> np.ndarray:
    """Smooth random perturbation: plane waves of 8-30 mm wavelength with amplitudes summing to 0.6."""
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(8.0, 30.0, (count, 1)))
    return np.column_stack([k, rng.uniform(0, 2 * np.pi, count), rng.dirichlet(np.ones(count)) * 0.6])


def paint_lesions(img: np.ndarray, mask: np.ndarray, lung_any: np.ndarray, r: SliceRenderer,
                  lesions: list[Lesion], z_mm: float, voxels: np.ndarray) -> None:
    """Paint every lesion crossing this slice into ``img`` (HU) and ``mask`` (1), only inside the lungs.

    Outside the mask the lesion fades into the lung over a thin halo (wider for ground-glass), the fuzzy edge
    an annotator leaves out.
    """
    for i, lesion in enumerate(lesions):
        found = _lesion_slice(r, lesion, z_mm)
        if found is None:
            continue
        level, noise, box = found
        lung = lung_any[box]
        inside = (level > 0.0) & lung
        lo, hi = GGO_HU if lesion.kind == "ggo" else CONSOLIDATION_HU
        halo = HALO["ggo" if lesion.kind == "ggo" else "consolidation"]
        alpha = np.clip(1.0 + level / halo, 0.0, 1.0) * lung  # 1 inside the mask, 0 beyond the halo
        region = img[box]
        region += alpha * (np.clip(lesion.hu + 60.0 * noise, lo, hi) - region)
        mask[box][inside] = 1
        voxels[i] += int(inside.sum())


def _lesion_slice(r: SliceRenderer, lesion: Lesion, z_mm: float):
    """(level, edge noise, box) of one lesion on one slice (inside where level > 0), or None where it does not
    reach the slice."""
    b = lesion.blobs[np.abs(lesion.blobs[:, 2] - z_mm) < lesion.blobs[:, 5]]
    cx, cy, ax, ay = (float(v) for v in lung_frame(r.p, lesion.side, z_mm))
    if len(b) == 0 or ax * ay <= 0:
        return None
    shrink = (1.0 - np.abs((z_mm - b[:, 2]) / b[:, 5]) ** 3) ** (1 / 3)  # blunt ends: visible at any pixel size
    xc, yc = cx + b[:, 0] * ax, cy + b[:, 1] * ay
    rx, ry = np.maximum(b[:, 3] * ax * shrink, 1e-3), np.maximum(b[:, 4] * ay * shrink, 1e-3)
    margin = 1.4  # the waves and the halo reach out to at most sqrt(1 + 0.6 + 0.25) radii
    box = r.box_of(float((xc.min() + xc.max()) / 2), float((yc.min() + yc.max()) / 2),
                   float((xc.max() - xc.min()) / 2 + margin * rx.max()),
                   float((yc.max() - yc.min()) / 2 + margin * ry.max()))
    x, y = r.x_mm[:, box[1]], r.y_mm[box[0], :]
    field = np.full((y.shape[0], x.shape[1]), -np.inf, dtype=np.float32)
    for j in range(len(b)):
        np.maximum(field, 1.0 - ((x - xc[j]) / rx[j]) ** 2 - ((y - yc[j]) / ry[j]) ** 2, out=field)
    noise = np.zeros_like(field)
    for kx, ky, kz, phase, amp in lesion.waves:
        noise += amp * np.cos(kx * x + ky * y + (kz * z_mm + phase))
    return field + noise, noise, box
