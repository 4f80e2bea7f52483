"""Data held per rank under torchrun: the fixed case -> rank map (ctmodel.distributed.case_ranks) vs re-partitioning
every epoch, at N = 1, 2, 4, on a demo-like synthetic index; plus the padding each epoch needs.

Run: PYTHONPATH=. python benchmarks/ddp_partition.py [--patients 12] [--epochs 50]

Slices held = whole cases (the resident loader loads whole cases), train cases only (rank 0 also holds the val
cases, not counted here). Baseline, same run: N = 1 (every rank holds everything) and a partition redrawn each epoch
from (seed, epoch), whose union over the epochs is what a rank would have to hold. Pure CPU, no store needed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ctmodel.distributed import case_ranks, partition_rows
from ctprep.index import case_rows
from ctsample.plan import PlanConfig, make_plan
from plan import lesion_runs


def demo_like_index(patients: int, seed: int = 0) -> pd.DataFrame:
    """``patients`` train cases of 40-300 slices, 1-4 lesion runs of 3-40 slices, ~15 % lesion-free (as the demo)."""
    rng = np.random.default_rng(seed)
    frames = []
    for number in range(patients):
        slices = int(rng.integers(40, 301))
        frames.append(case_rows(f"p{number:04d}", slices, list(lesion_runs(rng, slices)), "train"))
    return pd.concat(frames, ignore_index=True)


def held_slices(cases_per_rank: list[set[str]], n_slices: pd.Series) -> list[int]:
    """Whole-case slices each rank loads."""
    return [int(n_slices.reindex(sorted(cases)).sum()) for cases in cases_per_rank]


def fixed_map(plan: pd.DataFrame, world: int, seed: int) -> tuple[list[set[str]], float]:
    """Cases per rank under case_ranks, and the mean share of padding per epoch."""
    owner = case_ranks(plan, world, seed)
    pads = []
    for _epoch, rows in plan.groupby("epoch"):
        sizes = [len(share) for share in partition_rows(rows, owner, world)]
        pads.append((max(sizes) * world - len(rows)) / len(rows))
    return [{c for c, r in owner.items() if r == rank} for rank in range(world)], float(np.mean(pads))


def per_epoch_map(plan: pd.DataFrame, world: int, seed: int) -> list[set[str]]:
    """Cases per rank when the partition is redrawn every epoch: the union over epochs."""
    held = [set() for _ in range(world)]
    for epoch, rows in plan.groupby("epoch"):
        for case, rank in case_ranks(rows, world, seed * 1_000_003 + int(epoch)).items():
            held[rank].add(case)
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    index = demo_like_index(args.patients, args.seed)
    plan = make_plan(index, PlanConfig(ratio=1.75, epochs=args.epochs, seed=args.seed)).slices
    n_slices = index.groupby("case_id")["n_slices"].first()
    total = int(n_slices.sum())
    print(f"{args.patients} train cases, {total} slices, plan {len(plan)} rows over {args.epochs} epochs")
    print(f"{'N':>2}  {'fixed map: max/rank':>20} {'share':>6} {'pad/epoch':>9}  {'per-epoch map: max/rank':>24} "
          f"{'share':>6}  {'map s':>6}")
    for world in (1, 2, 4):
        start = time.perf_counter()
        fixed, pad = fixed_map(plan, world, args.seed)
        seconds = time.perf_counter() - start
        moving = held_slices(per_epoch_map(plan, world, args.seed), n_slices)
        held = held_slices(fixed, n_slices)
        print(f"{world:>2}  {max(held):>20} {max(held) / total:>6.0%} {pad:>9.1%}  {max(moving):>24} "
              f"{max(moving) / total:>6.0%}  {seconds:>6.3f}")


if __name__ == "__main__":
    main()
