"""Planning speed: ctsample's vectorised planner vs a straightforward per-patient pandas loop, in one run.

Run: python benchmarks/plan.py [--patients 200] [--slices 300] [--epochs 50]

The index is synthetic (no store needed): each patient has 1-4 lesion runs of 3-40 slices and ~15 % of patients
are lesion-free, as in the demo data. The baseline implements the same rule the way research code usually does
(for each epoch, for each patient: boolean masks, a neighbour loop over lesion slices, rng.choice for the fill);
both plans are checked to hold the same number of rows per epoch. Single process, one core.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ctprep.index import case_rows
from ctsample.plan import PlanConfig, make_plan
from timing import best_of


def synthetic_index(patients: int, slices: int, seed: int = 0) -> pd.DataFrame:
    """An index of ``patients`` x ``slices`` with lesion runs."""
    rng = np.random.default_rng(seed)
    frames = [case_rows(f"p{number:04d}", slices, list(lesion_runs(rng, slices)), "train") for number in range(patients)]
    return pd.concat(frames, ignore_index=True)


def lesion_runs(rng: np.random.Generator, slices: int) -> np.ndarray:
    """Lesion pixels per slice of one patient: ~15 % lesion-free, else 1-4 runs of 3-40 slices at 50 pixels."""
    lesion = np.zeros(slices, np.int64)
    if rng.random() > 0.15:
        for _ in range(rng.integers(1, 5)):
            start = rng.integers(0, slices)
            lesion[start:start + rng.integers(3, 41)] = 50
    return lesion


def loop_plan(index: pd.DataFrame, cfg: PlanConfig) -> pd.DataFrame:
    """The same rule, patient by patient and epoch by epoch (the usual research-code shape)."""
    rows = []
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        for case_id, case in index.groupby("case_id", sort=True):
            lesion = case["has_lesion"].to_numpy()
            near = np.zeros(len(lesion), bool)
            for z in np.flatnonzero(lesion):
                near[max(0, z - cfg.neighbours):z + cfg.neighbours + 1] = True
            neighbour = np.flatnonzero(near & ~lesion)
            far = np.flatnonzero(~near & ~lesion)
            n_lesion = int(lesion.sum())
            if n_lesion:
                target = int(np.floor(cfg.ratio * n_lesion + 0.5))
            else:
                target = int(np.ceil(cfg.lesion_free * len(lesion)))
            fill = rng.choice(far, size=min(max(target - len(neighbour), 0), len(far)), replace=False)
            for z in np.flatnonzero(lesion):
                rows.append((epoch, case_id, int(z), "lesion"))
            for z in neighbour:
                rows.append((epoch, case_id, int(z), "neighbour"))
            for z in fill:
                rows.append((epoch, case_id, int(z), "fill"))
    return pd.DataFrame(rows, columns=["epoch", "case_id", "slice", "role"])




def main() -> None:
    """Time both planners on the same index and print seconds per epoch and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--baseline-epochs", type=int, default=5, help="epochs timed for the (slow) loop")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    index = synthetic_index(args.patients, args.slices)
    cfg = PlanConfig(ratio=1.75, neighbours=1, epochs=args.epochs)
    ours, plan = best_of(lambda: make_plan(index, cfg), args.repeats)
    small = PlanConfig(ratio=1.75, neighbours=1, epochs=args.baseline_epochs)
    theirs, looped = best_of(lambda: loop_plan(index, small), 1)
    per_epoch_ours, per_epoch_loop = ours / args.epochs, theirs / args.baseline_epochs
    same = (plan.slices.groupby("epoch").size().iloc[:args.baseline_epochs].to_numpy()
            == looped.groupby("epoch").size().to_numpy()).all()
    lesion = int(index["has_lesion"].sum())
    print(f"index: {args.patients} patients x {args.slices} slices = {len(index):,} rows, {lesion:,} lesion slices")
    print(f"plan: ratio 1.75, neighbours 1, {args.epochs} epochs -> {len(plan.slices):,} rows "
          f"({len(plan.slices) // args.epochs:,} per epoch)")
    print(f"{'planner':<40}{'s/epoch':>10}{'total s':>10}")
    print(f"{'ctsample.plan.make_plan (vectorised)':<40}{per_epoch_ours:>10.4f}{ours:>10.3f}")
    print(f"{'per-patient loop (baseline)':<40}{per_epoch_loop:>10.4f}{theirs:>10.3f}  ({args.baseline_epochs} epochs)")
    print(f"speed-up: {per_epoch_loop / per_epoch_ours:.1f}x per epoch; rows per epoch identical: {bool(same)}")


if __name__ == "__main__":
    main()
