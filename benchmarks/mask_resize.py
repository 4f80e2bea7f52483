"""Mask resampling: lesions lost, round-trip Dice and speed of the v2 rule vs the v1 rule (filter + 0.5), in one run.

Run: python benchmarks/mask_resize.py [--slices 64]

(a) Small lesions: 2,000 random components of 1-9 voxels (random shapes, random offsets) on 512^2 planes,
    stored at 256, 128 and 64: components that keep no stored pixel (a pixel holding one of their voxel centres).
(b) Round trip: a disc of radius r voxels (512 -> 256 -> back with geometry.inverse_mask), Dice with the source.
(c) Speed: forward_mask on a (slices, 512, 512) volume with large lesions on half the slices plus 40 specks per
    lesion slice; the v1 rule on the same volume is the baseline. Single process, best of 3.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from ctprep import geometry
from timing import best_of

SIDE = 512


def v1_forward_mask(mask: np.ndarray, geom: geometry.CaseGeometry) -> np.ndarray:
    """The format-1 rule: the image's linear filter, threshold 0.5, nothing else."""
    planes = geometry.plane_view(mask, geom)
    stored = np.zeros((planes.shape[0], geom.size, geom.size), np.uint8)
    busy = np.flatnonzero(planes.any(axis=(1, 2)))
    if busy.size:
        stored[busy] = geometry.resize_planes(planes[busy].astype(np.float32), geom.size) >= 0.5
    return stored


def specks(n_slices: int, per_slice: int, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) RAS mask of isolated components of 1-9 voxels, at least 12 voxels apart."""
    mask = np.zeros((SIDE, SIDE, n_slices), bool)
    grid = np.arange(8, SIDE - 8, 12)
    for z in range(n_slices):
        xs, ys = rng.choice(grid, per_slice), rng.choice(grid, per_slice)
        for x, y in zip(xs, ys):
            blob = rng.random((3, 3)) < rng.uniform(0.1, 1.0)
            blob[1, 1] = True
            mask[x - 1 : x + 2, y - 1 : y + 2, z] |= blob
    return mask


def lost_components(mask: np.ndarray, stored: np.ndarray, geom: geometry.CaseGeometry) -> tuple[int, int, int]:
    """(components, components of >= 2 voxels, of which lost) per the centre-pixel rule."""
    planes = geometry.to_planes(mask, geom)
    labels, n = ndimage.label(planes, structure=geometry.IN_PLANE_8)
    z, r, c = np.nonzero(labels)
    to_pixel = (2 * np.arange(SIDE) + 1) * geom.size // (2 * SIDE)
    kept = np.bincount(labels[z, r, c], weights=stored[z, to_pixel[r], to_pixel[c]], minlength=n + 1)[1:] > 0
    sizes = np.bincount(labels[z, r, c], minlength=n + 1)[1:]
    return n, int((sizes >= 2).sum()), int((~kept & (sizes >= 2)).sum())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    affine = np.eye(4)

    print("(a) components of >= 2 voxels that vanish (2,000 random 1-9 voxel components)")
    small = specks(50, 40, rng)
    for size in (256, 128, 64):
        geom = geometry.describe(affine, small.shape, size)
        n, n2, lost_v1 = lost_components(small, v1_forward_mask(small, geom), geom)
        _, _, lost_v2 = lost_components(small, geometry.forward_mask(small, geom), geom)
        print(f"  512 -> {size:3d}: {n2} of {n} components have >= 2 voxels; lost v1 {lost_v1}, v2 {lost_v2}")

    print("(b) round-trip Dice of a disc, 512 -> 256 -> 512")
    x, y = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    for radius in (2, 3, 5, 10, 20, 40):
        disc = (((x - 200.3) ** 2 + (y - 301.7) ** 2) <= radius**2)[:, :, None]
        geom = geometry.describe(affine, disc.shape, 256)
        row = []
        for name, rule in (("v1", v1_forward_mask), ("v2", geometry.forward_mask)):
            back = geometry.inverse_mask(rule(disc, geom), geom).astype(bool)
            row.append(f"{name} {dice(back, disc):.3f}")
        print(f"  radius {radius:2d} ({int(disc.sum()):5d} voxels): " + ", ".join(row))

    print(f"(c) forward_mask speed, ({args.slices}, 512, 512), 256 out, best of 3")
    volume = np.zeros((SIDE, SIDE, args.slices), bool)
    volume[:, :, ::2] = (((x - 180) ** 2 + (y - 260) ** 2) <= 60**2)[:, :, None]
    volume |= specks(args.slices, 40, rng) & (np.arange(args.slices) % 2 == 0)
    geom = geometry.describe(affine, volume.shape, 256)
    base = best_of(lambda: v1_forward_mask(volume, geom))[0]
    new = best_of(lambda: geometry.forward_mask(volume, geom))[0]
    image = best_of(lambda: geometry.forward(volume.astype(np.float32), geom, fill=0.0))[0]
    print(f"  v1 rule (baseline) {base * 1e3:7.1f} ms   v2 rule {new * 1e3:7.1f} ms   ratio {new / base:.2f}x")
    print(f"  for scale: the image's forward (float32, same volume) {image * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
