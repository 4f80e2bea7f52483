"""Checks of a plan's rows before anything trusts them: hand-edited or foreign plan files fail here, in one line.

``check_rows`` needs the plan only (types, ranges, roles, repeats); ``check_cases`` also needs the store's index
(the case exists, is labeled (or, for a ``pseudo`` row, holds a pseudo-label), and holds the slice). Every check is vectorised and names the first offending row,
counted from 0 in file order (as pandas reads it). See docs/sampling.md "Plan files".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ctprep.errors import PlanError
from ctprep.index import index_fingerprint

ROLES = ("lesion", "neighbour", "fill", "pseudo")  # pseudo: any row of a pseudo-labelled patient (--pseudo)
PLAN_COLUMNS = ("epoch", "case_id", "slice", "role")
FINGERPRINT_KEYS = ("index_fingerprint", "store_fingerprint", "fingerprint")


def replan_hint(store: object = "STORE") -> str:
    """What to do about a bad plan: make a fresh one."""
    return f"re-run `ctsample plan {store} --out FILE` (plans are not meant to be edited by hand)"


def check_rows(slices: pd.DataFrame, params: dict, source: str) -> None:
    """PlanError unless every row has integer epoch/slice, epoch in range, slice >= 0, a case id, a known role,
    and no (epoch, case_id, slice) twice unless ``params["repeats"]`` is true."""
    missing = [c for c in PLAN_COLUMNS if c not in slices.columns]
    if missing:
        raise PlanError(f"{source}: plan lacks columns {missing} (expected {list(PLAN_COLUMNS)}); {replan_hint()}")
    for column in ("epoch", "slice"):
        check_integer_column(slices[column], column, source)
    epochs = params.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        check_range(slices, "epoch", epochs, source, ", the plan's epoch count")
    check_range(slices, "slice", None, source)
    check_case_ids(slices, source)
    check_roles(slices, source)
    if params.get("repeats") is not True:  # plans without the key predate it and never repeated
        check_no_repeats(slices, source)


def check_integer_column(values: pd.Series, column: str, source: str) -> None:
    """Integers only: a float column (NaN, 2.5, even 3.0) is what a hand edit leaves, and is refused."""
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        return
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        numeric = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        bad = ~np.isfinite(numeric) | (numeric != np.round(numeric))
        row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
    else:
        row = 0
    raise PlanError(f"{source}: column {column!r} must hold integers (expected int, found {values.dtype} with "
                    f"{values.iloc[row]!r} in row {row}); {replan_hint()}")


def check_range(slices: pd.DataFrame, column: str, high: int | None, source: str, note: str = "") -> None:
    """PlanError naming the first row whose ``column`` is outside [0, high) (high None: no upper bound)."""
    values = slices[column].to_numpy(np.int64)
    bad = (values < 0) | (values >= high if high is not None else False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        bound = f"0 <= {column} < {high}{note}" if high is not None else f"{column} >= 0"
        raise PlanError(f"{source}: row {row} ({describe(slices, row)}) is out of range (expected {bound}, found "
                        f"{values[row]}); {replan_hint()}")


def check_case_ids(slices: pd.DataFrame, source: str) -> None:
    """Every row names a case (no missing or empty case id)."""
    codes, cases = pd.factorize(slices["case_id"])  # missing ids get code -1
    bad = (codes < 0) | (np.asarray([len(str(c)) == 0 for c in cases], bool)[codes] if len(cases) else False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PlanError(f"{source}: row {row} has no case id (expected a case of the store, found "
                        f"{slices['case_id'].iloc[row]!r}); {replan_hint()}")


def check_roles(slices: pd.DataFrame, source: str) -> None:
    """Every role is one of ROLES."""
    bad = ~slices["role"].isin(ROLES).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PlanError(f"{source}: row {row} has role {slices['role'].iloc[row]!r} (expected one of "
                        f"{', '.join(ROLES)}); {replan_hint()}")


def check_no_repeats(slices: pd.DataFrame, source: str) -> None:
    """No (epoch, case_id, slice) twice: make_plan never repeats a slice within an epoch, so a repeat is an edit."""
    key = row_keys(slices)
    repeat = pd.Series(key).duplicated(keep="first").to_numpy()
    if repeat.any():
        later = int(np.flatnonzero(repeat)[0])
        first = int(np.flatnonzero(key == key[later])[0])
        raise PlanError(f"{source}: rows {first} and {later} both plan {describe(slices, later)} (expected each "
                        f"slice once per epoch, found {int(repeat.sum())} repeated row(s)); {replan_hint()}, or if "
                        "the repeats are meant set plan.params['repeats'] = True before save_plan")


def row_keys(slices: pd.DataFrame) -> np.ndarray:
    """One int64 per row, equal exactly when (epoch, case_id, slice) are equal (epoch and slice are >= 0 here)."""
    codes, cases = pd.factorize(slices["case_id"].astype(str))
    epoch, slice_index = slices["epoch"].to_numpy(np.int64), slices["slice"].to_numpy(np.int64)
    n_cases, slice_span = max(len(cases), 1), int(slice_index.max(initial=0)) + 1
    if (int(epoch.max(initial=0)) + 1) * n_cases * slice_span >= 2**62:  # absurd hand-edited values: no packing
        frame = pd.DataFrame({"epoch": epoch, "case": codes, "slice": slice_index})
        return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy(np.int64)
    return (epoch * n_cases + codes) * slice_span + slice_index


def check_for_store(slices: pd.DataFrame, params: dict, index: pd.DataFrame, source: str, store_path: object) -> None:
    """Every check of a plan before training on ``store_path``: its rows, its fingerprint, its cases and slices."""
    check_rows(slices, params, source)
    check_fingerprint(params, index, source, store_path)
    check_cases(slices, index, source, store_path)


def check_fingerprint(params: dict, index: pd.DataFrame, source: str, store_path: object) -> None:
    """PlanError when the plan records an index fingerprint other than the store's (a plan without one passes);
    a --pseudo plan's fingerprint also covers the pseudo-labels (``index_fingerprint(pseudo=True)``)."""
    fingerprint = index_fingerprint(index, pseudo=params.get("pseudo") is True)
    planned = next((params[k] for k in FINGERPRINT_KEYS if k in params), fingerprint)
    if planned != fingerprint:
        raise PlanError(f"{source}: plan does not match {store_path} (expected index fingerprint {fingerprint}, "
                        f"found {planned}): it was made from another store, from this one before its masks, "
                        f"splits or pseudo-labels changed, or by an older ctstack; {replan_hint(store_path)}")


def check_cases(slices: pd.DataFrame, index: pd.DataFrame, source: str, store_path: object) -> None:
    """PlanError unless every row's case is in ``index``, is labeled (a ``pseudo`` row's: unlabeled with a
    pseudo-label), and holds the slice (0 <= slice < n_slices)."""
    has_pseudo = index["pseudo_confidence"].notna() if "pseudo_confidence" in index else False
    per_case = index.assign(has_pseudo=has_pseudo).groupby(index["case_id"].astype(str), sort=True).agg(
        n_slices=("n_slices", "first"), labeled=("labeled", "first"), has_pseudo=("has_pseudo", "max"))
    codes, cases = pd.factorize(slices["case_id"].astype(str))  # few distinct cases: look those up, not every row
    position = per_case.index.get_indexer(cases)[codes] if len(cases) else np.zeros(0, np.int64)
    unknown = position < 0
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise PlanError(f"{source}: row {row} names case {slices['case_id'].iloc[row]!r}, which {store_path} does "
                        f"not hold (expected a case of the store's index); {replan_hint(store_path)}")
    check_case_kinds(slices, per_case, position, source, store_path)
    n_slices = per_case["n_slices"].to_numpy(np.int64)[position]
    slice_index = slices["slice"].to_numpy(np.int64)
    outside = (slice_index < 0) | (slice_index >= n_slices)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise PlanError(f"{source}: row {row} ({describe(slices, row)}) is out of range (expected 0 <= slice < "
                        f"{n_slices[row]}, the case's slice count in {store_path}); {replan_hint(store_path)}")


def check_case_kinds(slices: pd.DataFrame, per_case: pd.DataFrame, position: np.ndarray, source: str,
                     store_path: object) -> None:
    """A ``pseudo`` row names an unlabeled case with a pseudo-label; every other row a labeled case."""
    labeled = per_case["labeled"].to_numpy(bool)[position]
    pseudo = (slices["role"] == "pseudo").to_numpy()
    bad = ~labeled & ~pseudo
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PlanError(f"{source}: row {row} names case {slices['case_id'].iloc[row]!r}, which has no mask in "
                        f"{store_path} (expected labeled cases only); {replan_hint(store_path)}")
    unfit = pseudo & (labeled | ~per_case["has_pseudo"].to_numpy(bool)[position])
    if unfit.any():
        row = int(np.flatnonzero(unfit)[0])
        found = "a labeled case" if labeled[row] else "an unlabeled case without a pseudo-label"
        raise PlanError(f"{source}: row {row} (role pseudo) names case {slices['case_id'].iloc[row]!r}, {found} "
                        f"in {store_path} (expected an unlabeled case with a pseudo-label); run `ctmodel "
                        f"pseudo-label RUN {store_path}` and {replan_hint(store_path)}")


def describe(slices: pd.DataFrame, row: int) -> str:
    """'epoch 0, case 'p', slice 5' for one row."""
    return (f"epoch {slices['epoch'].iloc[row]}, case {str(slices['case_id'].iloc[row])!r}, "
            f"slice {slices['slice'].iloc[row]}")
