"""Surface-metric speed on one large case: ctstack's k-d tree vs a distance transform vs all pairs, in one run.

Run: python benchmarks/metrics.py [--slices 300] [--size 512] [--cdist-rows 2000] [--edt-directions 1] [--repeats 3]

The case is synthetic: a bilateral infection in a Z x S x S chest CT, truth = smooth noise (upsampled from a
coarse grid) above a threshold inside two lung ellipsoids, pred = the same field shifted by 2 columns and cut at
a slightly higher level (irregular disagreement everywhere along the surface). Spacing (1.25, 0.7, 0.7) mm
scaled with 512 / S in-plane. Timed on the same masks:
  (a) ctmodel.surface.surface_distances (k-d tree on the union box's surface voxels), best of --repeats;
  (b) the distance-transform route: scipy's distance_transform_edt(~surface, sampling=spacing) on the union's
      bounding box, sampled at the other surface; --edt-directions of the 2 are timed (the second costs the
      same: one direction is timed by default and doubled, the printout says so);
  (c) all pairs (the former torch.cdist path, chunked, exact differences): --cdist-rows surface points are
      timed against the whole other surface and the time extrapolated linearly to all rows of both directions
      (the printout says so; 0 skips it);
  (d) ctmodel.metrics.case_metrics: evaluate's whole per-case metric time (Dice, IoU, NSD, HD95, volumes,
      slice means).
(a) and (b) are checked equal within 1e-6 mm on the directions (b) computed, and (a) against (c) on its rows.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from ctmodel.metrics import case_metrics
from ctmodel.surface import _bounding_crop, surface_distances, surface_voxels
from timing import best_of


def bilateral_case(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) boolean (slices, size, size) masks: irregular lesions filling parts of both lungs."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=(slices // 5, size // 8, size // 8)), sigma=(1, 1.5, 1.5))
    field = ndimage.zoom(coarse.astype(np.float32), (slices / coarse.shape[0], 8, 8), order=1)
    z, y, x = np.ogrid[:slices, :size, :size]
    height, depth, width = 0.43 * slices, 0.39 * size, 0.21 * size

    def lung(centre_x: float) -> np.ndarray:
        return ((z - slices / 2) / height) ** 2 + ((y - size / 2) / depth) ** 2 + ((x - centre_x) / width) ** 2 <= 1

    lungs = lung(0.29 * size) | lung(0.71 * size)
    return lungs & (np.roll(field, 2, axis=2) > 0.18), lungs & (field > 0.15)




def edt_direction(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``source`` to ``target``'s surface, by an EDT on the union box."""
    crop = _bounding_crop(source, target)
    to_target = ndimage.distance_transform_edt(~surface_voxels(target[crop]), sampling=spacing)
    return to_target[surface_voxels(source[crop])]


def cdist_rows(points: torch.Tensor, targets: torch.Tensor, chunk: int = 1 << 22) -> np.ndarray:
    """Nearest distance of each of ``points`` among all ``targets``, the former all-pairs way (chunked)."""
    out, rows = np.empty(points.shape[0]), max(1, chunk // targets.shape[0])
    for start in range(0, points.shape[0], rows):
        block = torch.cdist(points[start:start + rows], targets, compute_mode="donot_use_mm_for_euclid_dist")
        out[start:start + rows] = block.min(dim=1).values.numpy()
    return out


def main() -> None:
    """Build the case, time (a)-(d) and print seconds and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cdist-rows", type=int, default=2000, help="rows timed for all pairs (0: skip)")
    parser.add_argument("--edt-directions", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spacing = (1.25, 0.7 * 512 / args.size, 0.7 * 512 / args.size)
    start = time.perf_counter()
    pred, truth = bilateral_case(args.slices, args.size)
    built = time.perf_counter() - start
    crop = _bounding_crop(pred, truth)
    box = tuple(s.stop - s.start for s in crop)
    n_pred, n_truth = int(surface_voxels(pred).sum()), int(surface_voxels(truth).sum())
    print(f"case: {pred.shape} spacing {tuple(round(s, 3) for s in spacing)} mm, built in {built:.1f} s; "
          f"union box {box} = {np.prod(box) / 1e6:.1f} M voxels")
    print(f"surface voxels: pred {n_pred:,}, truth {n_truth:,}; lesion {truth.sum():,} / pred {pred.sum():,} voxels")

    ours, distances = best_of(lambda: surface_distances(pred, truth, spacing), args.repeats)
    rows = [("(a) k-d tree: ctmodel.surface.surface_distances", ours, "")]
    if args.edt_directions:
        one, edt_truth = best_of(lambda: edt_direction(pred, truth, spacing), 1)
        assert np.allclose(edt_truth, distances.pred_to_truth, rtol=0, atol=1e-6), "EDT and k-d tree disagree"
        total = one
        if args.edt_directions == 2:
            other, edt_pred = best_of(lambda: edt_direction(truth, pred, spacing), 1)
            assert np.allclose(edt_pred, distances.truth_to_pred, rtol=0, atol=1e-6), "EDT and k-d tree disagree"
            total += other
        note = "both directions timed" if args.edt_directions == 2 else "pred->truth timed, x2 for both"
        rows.append(("(b) scipy distance_transform_edt on the union box", total * (3 - args.edt_directions), note))
    if args.cdist_rows:
        index = np.argwhere(surface_voxels(pred[crop])) * np.asarray(spacing)
        targets = torch.from_numpy(np.argwhere(surface_voxels(truth[crop])) * np.asarray(spacing))
        sample = torch.from_numpy(index[:args.cdist_rows])
        part, near = best_of(lambda: cdist_rows(sample, targets), 1)
        assert np.allclose(near, distances.pred_to_truth[:args.cdist_rows], rtol=0, atol=1e-6), "cdist disagrees"
        rows.append(("(c) all pairs (torch.cdist, former path)", part * (n_pred + n_truth) / len(sample),
                     f"{len(sample):,} rows timed ({part:.2f} s), x{(n_pred + n_truth) / len(sample):.0f} linear"))
    metrics_time, metrics = best_of(lambda: case_metrics(pred, truth, spacing), max(1, args.repeats - 1))
    rows.append(("(d) ctmodel.metrics.case_metrics (evaluate per case)", metrics_time, "all metrics, k-d tree path"))

    print(f"{'surface distances, both directions':<56}{'s':>9}  note")
    for name, seconds, note in rows:
        print(f"{name:<56}{seconds:>9.2f}  {note}")
    for name, seconds, _ in rows[1:-1]:
        print(f"ratio {name[:3]} / (a): {seconds / ours:,.0f}x")
    print(f"case_metrics: {metrics_time:.2f} s per case (goal < 1 s); HD95 {metrics.hd95_mm:.2f} mm, "
          f"NSD@1mm {metrics.nsd:.4f}, Dice {metrics.dice:.4f}")


if __name__ == "__main__":
    main()
