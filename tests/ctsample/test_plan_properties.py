"""Properties of every plan, over random indexes (hypothesis): what training relies on, whatever the data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ctprep.index import case_rows
from ctprep.errors import PlanError
from ctsample.plan import PlanConfig, make_plan
from ctsample.planfile import check_for_store

SPLITS = ("train", "val", "test")


@st.composite
def indexes(draw) -> pd.DataFrame:
    """1-6 patients of 1-60 slices, random lesion runs, random splits, now and then an unlabeled one."""
    frames = []
    for number in range(draw(st.integers(1, 6))):
        n_slices = draw(st.integers(1, 60))
        lesion = np.zeros(n_slices, int)
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, n_slices - 1))
            lesion[start:start + draw(st.integers(1, 15))] = 1
        labeled = draw(st.booleans()) or number == 0
        split = "train" if number == 0 else draw(st.sampled_from(SPLITS))
        frames.append(case_rows(f"p{number}", n_slices, list(lesion) if labeled else None, split))
    return pd.concat(frames, ignore_index=True)


configs = st.builds(PlanConfig, ratio=st.one_of(st.none(), st.floats(0, 5)), neighbours=st.integers(0, 3),
                    split=st.just("train"), epochs=st.integers(1, 4), seed=st.integers(0, 2**16),
                    strict=st.booleans(), lesion_free=st.sampled_from([0.0, 0.1, 1.0]))


def lesion_map(index: pd.DataFrame) -> dict[str, np.ndarray]:
    return {case: rows.sort_values("slice")["has_lesion"].to_numpy() for case, rows in index.groupby("case_id")}


@settings(max_examples=150, deadline=None)
@given(indexes(), configs)
def test_every_lesion_slice_of_a_planned_patient_is_in_every_epoch(index, cfg):
    plan = make_plan(index, cfg)
    train = index[(index["split"] == "train") & index["labeled"] & index["has_lesion"]]
    expected = set(zip(train["case_id"], train["slice"]))
    for _, rows in plan.slices.groupby("epoch"):
        assert set(zip(rows.loc[rows["role"] == "lesion", "case_id"], rows.loc[rows["role"] == "lesion", "slice"])) \
            == expected


@settings(max_examples=150, deadline=None)
@given(indexes(), configs)
def test_no_slice_twice_in_an_epoch_none_outside_the_split_none_unlabeled(index, cfg):
    plan = make_plan(index, cfg)
    assert not plan.slices.duplicated(["epoch", "case_id", "slice"]).any()
    allowed = index[(index["split"] == "train") & index["labeled"]]
    assert set(zip(plan.slices["case_id"], plan.slices["slice"])) <= set(zip(allowed["case_id"], allowed["slice"]))
    assert sorted(plan.slices["epoch"].unique()) == list(range(cfg.epochs)) or plan.slices.empty


@settings(max_examples=150, deadline=None)
@given(indexes(), configs.filter(lambda c: not c.strict))
def test_every_empty_neighbour_within_k_is_present_when_not_strict(index, cfg):
    plan = make_plan(index, cfg)
    for case, lesion in lesion_map(index[(index["split"] == "train") & index["labeled"]]).items():
        near = np.zeros(len(lesion), bool)
        for z in np.flatnonzero(lesion):
            near[max(0, z - cfg.neighbours):z + cfg.neighbours + 1] = True
        expected = set(np.flatnonzero(near & ~lesion))
        for _, rows in plan.slices[plan.slices["case_id"] == case].groupby("epoch"):
            assert set(rows.loc[rows["role"] == "neighbour", "slice"]) == expected


@settings(max_examples=150, deadline=None)
@given(indexes(), configs.filter(lambda c: c.ratio is not None))
def test_achieved_ratio_is_the_target_wherever_availability_allows_and_shortfalls_are_reported(index, cfg):
    plan = make_plan(index, cfg)
    for row in plan.patients.itertuples():
        per_epoch = plan.slices[(plan.slices["case_id"] == row.case_id) & (plan.slices["epoch"] == 0)]
        empties = int((per_epoch["role"] != "lesion").sum())
        if row.lesion == 0:
            continue
        target = int(np.floor(cfg.ratio * row.lesion + 0.5))
        if empties == target:
            assert row.reason == ""
        elif empties < target:
            assert empties == row.empty_before and row.reason.startswith("only")
        else:
            assert not cfg.strict and "exceed" in row.reason


@settings(max_examples=60, deadline=None)
@given(indexes(), configs)
def test_same_seed_same_plan(index, cfg):
    pd.testing.assert_frame_equal(make_plan(index, cfg).slices, make_plan(index, cfg).slices)


def test_different_seeds_and_different_epochs_draw_different_fills():
    index = case_rows("p", 300, [1 if 100 <= z < 120 else 0 for z in range(300)], "train")
    one, other = (make_plan(index, PlanConfig(ratio=1.75, epochs=3, seed=s)).slices for s in (0, 1))
    fill = {e: set(r.loc[r["role"] == "fill", "slice"]) for e, r in one.groupby("epoch")}
    assert fill[0] != fill[1] != fill[2]
    assert set(other.loc[(other["epoch"] == 0) & (other["role"] == "fill"), "slice"]) != fill[0]
    assert all(len(f) == 33 for f in fill.values())  # 35 empties = 2 neighbours + 33 fill, in every epoch


CORRUPTIONS = ("negative slice", "slice = n_slices", "NaN slice", "duplicate row", "unknown case")


def corrupt(slices: pd.DataFrame, index: pd.DataFrame, kind: str, row: int) -> pd.DataFrame:
    """``slices`` with one hand edit of ``kind`` at ``row``."""
    edited = slices.copy()
    if kind == "negative slice":
        edited.loc[row, "slice"] = -1 - row % 3
    elif kind == "slice = n_slices":
        n_slices = index.groupby("case_id")["n_slices"].first()
        edited.loc[row, "slice"] = n_slices[edited.loc[row, "case_id"]]
    elif kind == "NaN slice":
        edited = edited.astype({"slice": "float64"})
        edited.loc[row, "slice"] = np.nan
    elif kind == "duplicate row":
        edited = pd.concat([edited, edited.iloc[[row]]], ignore_index=True)
    else:
        edited.loc[row, "case_id"] = "not-a-case"
    return edited


@settings(max_examples=100, deadline=None)
@given(indexes(), configs)
def test_every_plan_make_plan_writes_passes_the_plan_checks(index, cfg):
    plan = make_plan(index, cfg)
    check_for_store(plan.slices, plan.params, index, "plan.parquet", "store.zarr")


@settings(max_examples=150, deadline=None)
@given(indexes(), configs, st.sampled_from(CORRUPTIONS), st.integers(0, 10**6))
def test_any_single_hand_edit_fails_the_plan_checks(index, cfg, kind, position):
    plan = make_plan(index, cfg)
    assume(len(plan.slices) > 0)
    edited = corrupt(plan.slices, index, kind, position % len(plan.slices))
    with pytest.raises(PlanError):
        check_for_store(edited, plan.params, index, "plan.parquet", "store.zarr")
