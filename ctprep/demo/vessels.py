"""Pulmonary vessel trees for the demo data: branching random walks from each hilum, drawn as ~+40 HU tubes.

Each lung gets an upper and a lower tree grown in lung-relative coordinates (so every branch stays inside the
lung as it narrows towards the apex and the base) by recursive splitting towards end points spread over the
lung, sampled into points every ~0.5-1 mm along each branch, and stamped as disks on every slice whose slab
contains them: one tree therefore runs through many slices.
"""
from __future__ import annotations

import numpy as np

from ctprep.demo.anatomy import Patient, lung_frame, to_pixel

VESSEL_HU = 40.0
LEAF_RADIUS_MM = 0.6
TARGETS_PER_TREE = 200


def draw_vessel_points(rng: np.random.Generator, p: Patient) -> np.ndarray:
    """Points (N, 5) = x_mm, y_mm, z_mm, radius_mm, step_mm along every branch of four trees, sorted by z."""
    half_height = (p.lung_top_mm - p.lung_bottom_mm) / 2
    hilum_w = (p.carina_mm - 15.0 - p.lung_bottom_mm) / half_height - 1
    _, _, ax, ay = (float(v) for v in lung_frame(p, 0, p.carina_mm))
    scale = np.array([ax, ay, half_height])  # lung-relative units -> mm, for splitting branches evenly
    chunks = []
    for side in (0, 1):
        root = np.array([-0.6 if side == 0 else 0.6, rng.uniform(-0.1, 0.2), hilum_w])
        for upper in (True, False):
            targets = _lung_targets(rng, TARGETS_PER_TREE, hilum_w, upper)
            segments: list[list[float]] = []
            _branch(rng, root, targets, scale, segments)
            chunks.append(_sample(p, side, np.array(segments), half_height))
    points = np.concatenate(chunks)
    return points[np.argsort(points[:, 2], kind="stable")]


def _lung_targets(rng: np.random.Generator, n: int, hilum_w: float, upper: bool) -> np.ndarray:
    """Branch end points spread evenly over the lung above (or below) the hilum, lung-relative (u, v, w)."""
    r, angle = 0.92 * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
    w = rng.uniform(hilum_w, 0.97, n) if upper else rng.uniform(-0.97, hilum_w, n)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle), w])


def _branch(rng: np.random.Generator, start: np.ndarray, targets: np.ndarray, scale: np.ndarray,
            out: list[list[float]]) -> None:
    """Grow a vessel from ``start`` that splits recursively, halving its targets, until it reaches each one.

    The radius follows the number of end points it feeds (about Murray's law), so the trunk at the hilum is a
    few mm wide and the branches taper to under a millimetre at the periphery.
    """
    radius = LEAF_RADIUS_MM * len(targets) ** 0.4
    if len(targets) == 1:
        out.append([*start, *targets[0], radius])
        return
    end = start + rng.uniform(0.35, 0.65) * (targets.mean(0) - start)
    out.append([*start, *end, radius])
    mm = (targets - targets.mean(0)) * scale
    axis = np.linalg.eigh(mm.T @ mm)[1][:, -1]  # split across the widest spread
    order = np.argsort(mm @ axis, kind="stable")
    half = len(targets) // 2
    _branch(rng, end, targets[order[:half]], scale, out)
    _branch(rng, end, targets[order[half:]], scale, out)


def _sample(p: Patient, side: int, segments: np.ndarray, half_height: float) -> np.ndarray:
    """Points every ~0.6 radius (0.4-1 mm) along each segment, mapped from lung-relative coordinates to mm."""
    seg = segments
    _, _, ax, ay = (float(v) for v in lung_frame(p, side, p.carina_mm))
    span_mm = np.abs(seg[:, 3:6] - seg[:, 0:3]) * [ax, ay, half_height]
    step_mm = np.clip(0.6 * seg[:, 6], 0.4, 1.0)
    counts = np.maximum(2, np.ceil(span_mm.sum(1) / step_mm).astype(int))
    t = np.concatenate([np.linspace(0.0, 1.0, n) for n in counts])
    rows = np.repeat(np.arange(len(seg)), counts)
    uvw = seg[rows, 0:3] + t[:, None] * (seg[rows, 3:6] - seg[rows, 0:3])
    z = p.lung_bottom_mm + (uvw[:, 2] + 1) * half_height
    cx, cy, fax, fay = lung_frame(p, side, z)
    step = np.linalg.norm(span_mm, axis=1) / (counts - 1)  # vessel length each point stands for
    return np.column_stack([cx + uvw[:, 0] * fax, cy + uvw[:, 1] * fay, z, seg[rows, 6], step[rows]])


def paint_vessels(img: np.ndarray, lung_any: np.ndarray, p: Patient, points: np.ndarray, z_mm: float) -> None:
    """Stamp the vessel points inside this slice's slab as disks, only where the slice is lung.

    Each point covers its pixels for ``step_mm / slice_mm`` of the slab (partial volume): a vessel running
    along z fills the slab (+40 HU), a thin one lying in the plane of a thick slice only shifts the lung a bit.
    """
    lo, hi = np.searchsorted(points[:, 2], [z_mm - p.slice_mm / 2, z_mm + p.slice_mm / 2])
    if lo == hi:
        return
    rows = np.rint(to_pixel(p, points[lo:hi, 1])).astype(np.int64)
    cols = np.rint(to_pixel(p, points[lo:hi, 0])).astype(np.int64)
    half_px = np.rint(2 * np.maximum(points[lo:hi, 3] / p.pixel_mm, 0.5)).astype(np.int64)  # radius, 0.5 px bins
    weight = points[lo:hi, 4] / p.slice_mm
    flat, weights = [], []
    for radius2 in np.unique(half_px):
        dy, dx = _disk_offsets(radius2 / 2)
        pick = half_px == radius2
        r, c = rows[pick, None] + dy, cols[pick, None] + dx
        inside = (r >= 0) & (r < p.size) & (c >= 0) & (c < p.size)
        flat.append((r * p.size + c)[inside])
        weights.append(np.broadcast_to(weight[pick, None], r.shape)[inside])
    pixels, inverse = np.unique(np.concatenate(flat), return_inverse=True)
    cover = np.minimum(np.bincount(inverse, np.concatenate(weights)), 1.0).astype(np.float32)
    keep = lung_any.ravel()[pixels]
    pixels, cover = pixels[keep], cover[keep]
    flat_img = img.ravel()
    flat_img[pixels] += cover * (VESSEL_HU - flat_img[pixels])


def _disk_offsets(radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the pixels within ``radius_px`` of a pixel centre."""
    n = int(np.ceil(radius_px))
    dy, dx = np.mgrid[-n:n + 1, -n:n + 1]
    keep = dy ** 2 + dx ** 2 <= radius_px ** 2
    return dy[keep], dx[keep]
