"""ctsample.planfile and the index fingerprint: a plan is checked before anything trusts its rows."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ctprep.errors import PlanError
from ctprep.index import case_rows, index_fingerprint
from ctsample.plan import METADATA_KEY, Plan, PlanConfig, load_plan, make_plan, save_plan
from ctsample.planfile import check_cases, check_for_store, check_rows


def two_patients(split_b: str = "train", lesion_b: range = range(4, 9)) -> pd.DataFrame:
    """Index of patient a (20 slices, lesion 5-9) and patient b (12 slices)."""
    rows = [case_rows("a", 20, [3 if 5 <= z < 10 else 0 for z in range(20)], "train"),
            case_rows("b", 12, [3 if z in lesion_b else 0 for z in range(12)], split_b)]
    return pd.concat(rows, ignore_index=True)


def saved_with(tmp_path, plan: Plan, slices: pd.DataFrame, name: str = "edited.parquet"):
    """``plan`` saved with hand-edited rows (its parameters kept), as a user's edit would leave it."""
    return save_plan(Plan(slices=slices, params=plan.params, patients=plan.patients), tmp_path / name)


# ------------------------------------------------------------------ fingerprint


def test_fingerprint_changes_with_lesion_flags_labels_and_splits_not_with_row_order():
    index = two_patients()
    base = index_fingerprint(index)
    moved_lesion = two_patients(lesion_b=range(5, 10))  # same case ids, same slice counts, same lesion count
    assert index_fingerprint(moved_lesion) != base
    assert index_fingerprint(two_patients(split_b="val")) != base
    unlabeled = index.assign(labeled=index["case_id"] == "a")
    assert index_fingerprint(unlabeled) != base
    shuffled = index.sample(frac=1.0, random_state=0)
    assert index_fingerprint(shuffled) == base
    more_voxels = index.assign(source_lesion_voxels=index["source_lesion_voxels"] + 5)  # not used by a plan
    assert index_fingerprint(more_voxels) == base


def test_plan_of_a_store_with_the_same_cases_and_slice_counts_but_other_lesions_is_refused():
    index = two_patients()
    plan = make_plan(index, PlanConfig())
    other = two_patients(lesion_b=range(5, 10))
    with pytest.raises(PlanError, match=r"p\.parquet: plan does not match other\.zarr .*older ctstack.*"
                                        r"ctsample plan other\.zarr"):
        check_for_store(plan.slices, plan.params, other, "p.parquet", "other.zarr")
    check_for_store(plan.slices, plan.params, index, "p.parquet", "store.zarr")  # its own store passes


def test_a_plan_recording_the_old_fingerprint_is_refused_with_a_replan_hint():
    index = two_patients()
    plan = make_plan(index, PlanConfig())
    per_case = index.groupby("case_id", sort=True)["n_slices"].first()  # what ctstack used to hash
    old = hashlib.sha256(";".join(f"{c}:{n}" for c, n in per_case.items()).encode()).hexdigest()[:16]
    with pytest.raises(PlanError, match=f"found {old}.*older ctstack"):
        check_for_store(plan.slices, {**plan.params, "index_fingerprint": old}, index, "p.parquet", "s.zarr")


# ------------------------------------------------------------------ rows of a plan file


def test_make_plan_records_that_it_never_repeats_a_slice():
    assert make_plan(two_patients(), PlanConfig()).params["repeats"] is False


def test_negative_slice_is_refused_naming_the_row(tmp_path):
    plan = make_plan(two_patients(), PlanConfig(epochs=2))
    row = int(np.flatnonzero(plan.slices["case_id"] == "b")[0])  # a's last slice is right before b's first
    edited = plan.slices.copy()
    edited.loc[row, "slice"] = -1
    path = saved_with(tmp_path, plan, edited)
    with pytest.raises(PlanError, match=rf"edited\.parquet: row {row} \(epoch 0, case 'b', slice -1\) is out of "
                                        r"range \(expected slice >= 0, found -1\); re-run `ctsample plan"):
        load_plan(path)


@pytest.mark.parametrize("dtype", ["float64", "Int64"])
def test_missing_slice_number_is_refused_whatever_the_column_type(tmp_path, dtype):
    plan = make_plan(two_patients(), PlanConfig())
    edited = plan.slices.astype({"slice": dtype})
    edited.loc[3, "slice"] = None  # NaN (float column) or <NA> (nullable integer column)
    with pytest.raises(PlanError, match=r"column 'slice' must hold integers \(expected int, found .* in row 3\)"):
        load_plan(saved_with(tmp_path, plan, edited))


def test_float_slice_numbers_are_refused_even_when_integral(tmp_path):
    plan = make_plan(two_patients(), PlanConfig())
    with pytest.raises(PlanError, match=r"column 'slice' must hold integers \(expected int, found float64"):
        load_plan(saved_with(tmp_path, plan, plan.slices.astype({"slice": "float64"})))


def test_duplicated_row_is_refused_unless_the_plan_says_repeats_are_meant(tmp_path):
    plan = make_plan(two_patients(), PlanConfig())
    edited = pd.concat([plan.slices, plan.slices.iloc[[2]]], ignore_index=True)
    last = len(edited) - 1
    with pytest.raises(PlanError, match=rf"rows 2 and {last} both plan epoch 0, case 'a', slice \d+ .*1 repeated"):
        load_plan(saved_with(tmp_path, plan, edited))
    meant = Plan(slices=edited, params={**plan.params, "repeats": True}, patients=plan.patients)
    assert len(load_plan(save_plan(meant, tmp_path / "oversampled.parquet")).slices) == last + 1


def test_epoch_beyond_the_plans_epochs_and_unknown_role_are_refused():
    plan = make_plan(two_patients(), PlanConfig(epochs=2))
    late = plan.slices.assign(epoch=plan.slices["epoch"] + 1)
    first_late = int(np.flatnonzero(late["epoch"] == 2)[0])
    with pytest.raises(PlanError, match=rf"row {first_late} .*expected 0 <= epoch < 2"):
        check_rows(late, plan.params, "p.parquet")
    with pytest.raises(PlanError, match="row 0 has role 'Lesion' .*expected one of lesion, neighbour, fill"):
        check_rows(plan.slices.assign(role=["Lesion"] + list(plan.slices["role"].iloc[1:])), plan.params, "p.parquet")


def test_rows_are_checked_against_the_store_case_label_and_slice_count():
    index = pd.concat([two_patients(), case_rows("u", 5, None, "train")], ignore_index=True)
    plan = make_plan(index, PlanConfig())
    past_end = plan.slices.copy()
    row = int(np.flatnonzero(past_end["case_id"] == "b")[0])
    past_end.loc[row, "slice"] = 12
    with pytest.raises(PlanError, match=rf"row {row} .*expected 0 <= slice < 12, the case's slice count in s\.zarr"):
        check_cases(past_end, index, "p.parquet", "s.zarr")
    with pytest.raises(PlanError, match="row 0 names case 'zz', which s.zarr does not hold"):
        check_cases(plan.slices.assign(case_id=["zz"] + list(plan.slices["case_id"].iloc[1:])), index, "p", "s.zarr")
    with pytest.raises(PlanError, match="row 0 names case 'u', which has no mask"):
        check_cases(plan.slices.assign(case_id=["u"] + list(plan.slices["case_id"].iloc[1:])).assign(
            slice=lambda d: np.where(d.index == 0, 0, d["slice"])), index, "p", "s.zarr")


def test_damaged_parameters_are_one_line_errors(tmp_path):
    plan = make_plan(two_patients(), PlanConfig())
    table = pq.read_table(save_plan(plan, tmp_path / "p.parquet"))
    for raw in (b"{not json", json.dumps([1, 2]).encode()):
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: raw}), tmp_path / "bad.parquet")
        with pytest.raises(PlanError, match=r"bad\.parquet: plan parameters are damaged \(expected a JSON object"):
            load_plan(tmp_path / "bad.parquet")


def test_repeats_are_found_even_with_absurd_slice_and_epoch_numbers():
    rows = pd.DataFrame({"epoch": [0, 2**40, 2**40], "case_id": ["a", "a", "a"], "slice": [2**40, 5, 5],
                         "role": ["fill"] * 3})
    with pytest.raises(PlanError, match="rows 1 and 2 both plan"):
        check_rows(rows, {}, "p.parquet")
    check_rows(rows.iloc[:2], {}, "p.parquet")
