"""COVID-19-like lesions for the demo data: irregular ground-glass and consolidation blobs inside the lungs.

A lesion is a chain of overlapping ellipsoids along a short path in lung-relative coordinates, its edge
perturbed by a few smooth random waves, and clipped to the lung on every slice. The lesions of one patient
cover non-overlapping height intervals whose total is drawn per patient, so patients range from a few lesion
slices to about half the scan, as in the source study's data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
class LesionStyle:
    """How lesions look and where they sit: the easy defaults, or the realistic difficulty's."""

    ggo_hu: tuple[float, float] = GGO_HU
    consolidation_hu: tuple[float, float] = CONSOLIDATION_HU
    ggo_p: float = 0.65  # the rest are consolidation
    halo: dict = field(default_factory=lambda: dict(HALO))
    soft_core: float = 0.0  # > 0: opacity ramps up over this much of the level inside the mask
    paving_hu: float = 0.0  # > 0: crazy-paving septa this much denser than the ground glass
    pleural_p: float = 0.0  # chance a lesion is placed against the lung's edge (pleura or mediastinum)


EASY_LESIONS = LesionStyle()


@dataclass(frozen=True)
class Lesion:
    """One lesion: its kind, mean HU, lung side (0 right, 1 left), ellipsoid chain and edge waves."""

    kind: str  # "ggo" or "consolidation"
    hu: float
    side: int
    blobs: np.ndarray  # (K, 6): u, v (lung-relative centre), z_mm, ru, rv (lung-relative radii), rz_mm
    waves: np.ndarray  # (M, 5): kx, ky, kz (rad/mm), phase, amplitude
    paving: tuple[float, float, float] = (0.0, 0.0, 0.0)  # septa period_mm, angle, HU (0: none)


def burden_stratum(seed: int, index: int) -> int:
    """Which of the STRATA lesion-burden bands case ``index`` falls in: a per-seed shuffle, repeated."""
    return int(np.random.default_rng([seed, 2**32 + 1]).permutation(STRATA)[index % STRATA])


def draw_lesions(rng: np.random.Generator, p: Patient, stratum: int,
                 style: LesionStyle = EASY_LESIONS) -> list[Lesion]:
    """Draw 0-6 lesions on non-overlapping height intervals of the lungs, with a burden set by ``stratum``.

    Stratifying the burden keeps a set's overall empty:lesion ratio close to the target (about 1.75) while
    single patients range from a few lesion slices (some with none) to about half of the scan.
    """
    if stratum == 0 and rng.random() < NO_LESION_P:
        return []
    lo, hi = COVERAGE
    coverage = lo + (hi - lo) * ((stratum + rng.uniform(0.2, 0.8)) / STRATA) ** BURDEN_SKEW
    n = int(np.clip(round(coverage * 7 + rng.uniform(-1.5, 1.5)), 1, 6))
    return [_draw_lesion(rng, p, z0, z1, style) for z0, z1 in _z_intervals(rng, p, coverage, n)]


def _z_intervals(rng: np.random.Generator, p: Patient, coverage: float, n: int) -> list[tuple[float, float]]:
    """``n`` disjoint height intervals inside the lungs whose lengths add up to ``coverage`` of the lung height."""
    margin = 0.04 * (p.lung_top_mm - p.lung_bottom_mm)
    lo, hi = p.lung_bottom_mm + margin, p.lung_top_mm - margin
    lengths = np.maximum(rng.dirichlet(np.full(n, 2.0)) * coverage * (hi - lo), max(2 * p.slice_mm, 6.0))
    gaps = rng.dirichlet(np.ones(n + 1)) * max(hi - lo - lengths.sum(), 0.0)
    starts = lo + np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths[:-1])])
    return [(float(s), float(s + length)) for s, length in zip(starts, lengths)]


def _draw_lesion(rng: np.random.Generator, p: Patient, z0: float, z1: float, style: LesionStyle) -> Lesion:
    """One lesion spanning heights z0..z1: mostly peripheral and posterior, as COVID-19 opacities are."""
    ggo = rng.random() < style.ggo_p
    k = int(np.clip(np.ceil((z1 - z0) / BLOB_SPACING_MM), 1, 12))
    spacing = (z1 - z0) / k
    theta = rng.uniform(-np.pi, 0.0) if rng.random() < 0.75 else rng.uniform(-np.pi, np.pi)
    theta = theta + np.cumsum(rng.normal(0.0, 0.25, k))
    radius = np.clip(rng.uniform(0.45, 0.75) + np.cumsum(rng.normal(0.0, 0.05, k)), 0.2, 0.8)
    size = rng.uniform(0.14, 0.34) if ggo else rng.uniform(0.10, 0.24)
    if style.pleural_p > 0 and rng.random() < style.pleural_p:  # centre near the edge: the lung clips it flat
        radius = np.clip(1.0 - 0.5 * size + np.cumsum(rng.normal(0.0, 0.02, k)), 0.75, 1.0)
    blobs = np.column_stack([
        radius * np.cos(theta), radius * np.sin(theta), z0 + spacing * (np.arange(k) + 0.5),
        size * rng.uniform(0.7, 1.3, k), size * rng.uniform(0.7, 1.3, k), np.full(k, 0.75 * spacing),
    ])
    lesion = Lesion(kind="ggo" if ggo else "consolidation",
                    hu=float(rng.uniform(*(style.ggo_hu if ggo else style.consolidation_hu))),
                    side=int(rng.integers(2)), blobs=blobs, waves=_waves(rng))
    if ggo and style.paving_hu > 0:
        paving = (float(rng.uniform(4.0, 8.0)), float(rng.uniform(0, np.pi)), float(style.paving_hu))
        lesion = dataclasses.replace(lesion, paving=paving)
    return lesion


def _waves(rng: np.random.Generator, count: int = 6) -> np.ndarray:
    """Smooth random perturbation: plane waves of 8-30 mm wavelength with amplitudes summing to 0.6."""
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(8.0, 30.0, (count, 1)))
    return np.column_stack([k, rng.uniform(0, 2 * np.pi, count), rng.dirichlet(np.ones(count)) * 0.6])


def paint_lesions(img: np.ndarray, mask: np.ndarray, lung_any: np.ndarray, r: SliceRenderer,
                  lesions: list[Lesion], z_mm: float, voxels: np.ndarray, style: LesionStyle = EASY_LESIONS) -> None:
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
        lo, hi = style.ggo_hu if lesion.kind == "ggo" else style.consolidation_hu
        halo = style.halo[lesion.kind]
        if style.soft_core > 0:  # ramps from 0 at the halo's outer edge to 1 at soft_core inside the mask
            alpha = np.clip((level + halo) / (halo + style.soft_core), 0.0, 1.0) * lung
        else:
            alpha = np.clip(1.0 + level / halo, 0.0, 1.0) * lung  # 1 inside the mask, 0 beyond the halo
        target = np.clip(lesion.hu + 60.0 * noise, lo, hi)
        if lesion.paving[2] > 0:
            target = target + lesion.paving[2] * _septa(r, box, lesion.paving)
        region = img[box]
        region += alpha * (target - region)
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


def _septa(r: SliceRenderer, box: tuple[slice, slice], paving: tuple[float, float, float]) -> np.ndarray:
    """Crazy paving: a polygonal web of thin lines (interlobular septa), 1 on a line and 0 between."""
    period, angle, _ = paving
    x, y = r.x_mm[:, box[1]], r.y_mm[box[0], :]
    u = (x * np.cos(angle) + y * np.sin(angle)) * (np.pi / period)
    v = (y * np.cos(angle) - x * np.sin(angle) + 0.3 * period * np.sin(u)) * (np.pi / period)
    return np.clip((np.maximum(np.abs(np.cos(u)), np.abs(np.cos(v))) - 0.85) / 0.15, 0.0, 1.0)
