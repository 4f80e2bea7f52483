"""Cost of checking a plan before training: the index fingerprint and the row checks, against making the plan.

Run: python benchmarks/plan_checks.py [--patients 200] [--slices 300] [--epochs 50] [--repeat 5]

Same synthetic index as benchmarks/plan.py. Baselines measured in the same run: the old fingerprint (a string of
"case:n_slices" per case, which missed lesion flags and splits) and make_plan itself (what a check is paid
against). Figures are the best of ``--repeat`` runs. Single process, one core.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from plan import synthetic_index
from ctprep.index import index_fingerprint
from ctsample.plan import PlanConfig, make_plan
from ctsample.planfile import check_for_store
from timing import best_of, int_options


def old_fingerprint(index: pd.DataFrame) -> str:
    """The fingerprint before issue 11: case ids and slice counts only."""
    per_case = index.groupby("case_id", sort=True)["n_slices"].first()
    return hashlib.sha256(";".join(f"{c}:{n}" for c, n in per_case.items()).encode()).hexdigest()[:16]


def main() -> None:
    args = int_options(__doc__, patients=200, slices=300, epochs=50, repeat=5)
    index = synthetic_index(args.patients, args.slices)
    plan = make_plan(index, PlanConfig(epochs=args.epochs))
    figures = {
        "make_plan (baseline)": best_of(lambda: make_plan(index, PlanConfig(epochs=args.epochs)), args.repeat)[0],
        "old fingerprint (baseline)": best_of(lambda: old_fingerprint(index), args.repeat)[0],
        "index_fingerprint v2": best_of(lambda: index_fingerprint(index), args.repeat)[0],
        "check_for_store (rows + fingerprint + cases)": best_of(
            lambda: check_for_store(plan.slices, plan.params, index, "plan.parquet", "store.zarr"), args.repeat)[0],
    }
    print(f"{len(index):,} index rows, {len(plan.slices):,} plan rows ({args.epochs} epochs), best of {args.repeat}")
    for name, seconds in figures.items():
        print(f"{name:46s} {seconds * 1e3:8.1f} ms")
    make, old = figures["make_plan (baseline)"], figures["old fingerprint (baseline)"]
    new, check = figures["index_fingerprint v2"], figures["check_for_store (rows + fingerprint + cases)"]
    print(f"fingerprint v2 / old fingerprint: {new / old:.2f} x; check_for_store / make_plan: {check / make:.2f} x")


if __name__ == "__main__":
    main()
