"""ctsample.plan: the study's balancing rule on hand-made indexes, and plan files."""
from __future__ import annotations

import pandas as pd
import pytest

from ctprep.errors import PlanError, UsageError
from ctprep.index import case_rows, index_fingerprint
from ctsample.plan import PlanConfig, load_plan, make_plan, parse_ratio, save_plan, summary


def patient(case_id: str, lesion_slices: range, n_slices: int, split: str = "train") -> pd.DataFrame:
    """Index rows of one labeled patient whose lesion occupies ``lesion_slices``."""
    return case_rows(case_id, n_slices, [7 if z in lesion_slices else 0 for z in range(n_slices)], split)


def roles(plan, epoch: int = 0) -> dict[str, list[int]]:
    rows = plan.slices[plan.slices["epoch"] == epoch]
    return {role: sorted(rows.loc[rows["role"] == role, "slice"]) for role in ("lesion", "neighbour", "fill")}


def test_worked_example_of_the_study_20_lesion_100_empty_at_1_75_gives_20_plus_35():
    index = patient("p", range(40, 60), 120)
    plan = make_plan(index, PlanConfig(ratio=1.75, neighbours=1))
    taken = roles(plan)
    assert taken["lesion"] == list(range(40, 60))
    assert taken["neighbour"] == [39, 60]  # the +-1 neighbours are inside
    assert len(taken["neighbour"]) + len(taken["fill"]) == 35
    assert plan.patients.loc[0, "ratio_after"] == pytest.approx(1.75)


def test_neighbours_beyond_the_ratio_are_kept_and_reported_unless_strict():
    index = patient("p", range(0, 60, 6), 60)  # 10 scattered lesion slices, 20 empty neighbours at k=1
    loose = make_plan(index, PlanConfig(ratio=1.0, neighbours=1))
    assert len(roles(loose)["neighbour"]) == 19 and roles(loose)["fill"] == []  # slice 59 is 5 away from 54
    assert "exceed" in loose.patients.loc[0, "reason"]
    strict = make_plan(index, PlanConfig(ratio=1.0, neighbours=1, strict=True))
    assert len(roles(strict)["neighbour"]) == 10 and strict.patients.loc[0, "reason"] == ""


def test_ratio_zero_takes_lesions_and_neighbours_and_natural_takes_everything():
    index = patient("p", range(10, 15), 40)
    assert sum(map(len, roles(make_plan(index, PlanConfig(ratio=0))).values())) == 5 + 2
    assert sum(map(len, roles(make_plan(index, PlanConfig(ratio=0, neighbours=0))).values())) == 5
    assert sum(map(len, roles(make_plan(index, PlanConfig(ratio=None))).values())) == 40
    with_healthy = pd.concat([index, patient("healthy", range(0), 30)])
    assert len(make_plan(with_healthy, PlanConfig(ratio=None)).slices) == 70  # natural keeps lesion-free patients whole


def test_shortfall_is_reported_with_its_reason():
    index = patient("p", range(0, 30), 40)  # 30 lesion, 10 empty: 1.75 needs 53
    plan = make_plan(index, PlanConfig(ratio=1.75))
    assert len(plan.slices) == 40
    assert plan.patients.loc[0, "reason"] == "only 10 empty slices, target 53"
    assert summary(plan).loc[0, "unmet"] == 1


def test_lesion_free_patients_give_a_fresh_fraction_of_their_slices_each_epoch():
    index = pd.concat([patient("sick", range(5, 10), 50), patient("healthy", range(0), 50)])
    plan = make_plan(index, PlanConfig(ratio=1.75, epochs=4, lesion_free=0.1))
    healthy = plan.slices[plan.slices["case_id"] == "healthy"]
    assert healthy.groupby("epoch").size().tolist() == [5, 5, 5, 5]
    assert set(healthy["role"]) == {"fill"}
    assert healthy["slice"].nunique() > 5  # different slices across epochs
    left_out = make_plan(index, PlanConfig(ratio=1.75, lesion_free=0.0))
    assert "healthy" not in set(left_out.slices["case_id"])
    assert "left out" in left_out.patients.set_index("case_id").loc["healthy", "reason"]


def test_unlabeled_cases_are_never_planned_and_a_split_without_labels_is_an_error():
    index = pd.concat([patient("a", range(3, 6), 20), case_rows("u", 20, None, "train"),
                       case_rows("v", 20, None, "val")])
    assert set(make_plan(index, PlanConfig()).slices["case_id"]) == {"a"}
    with pytest.raises(PlanError, match="no labeled case"):
        make_plan(index, PlanConfig(split="val"))
    with pytest.raises(PlanError, match="holds no case"):
        make_plan(index, PlanConfig(split="test"))


def test_plan_keeps_to_its_split():
    index = pd.concat([patient("a", range(3, 6), 20, "train"), patient("b", range(3, 6), 20, "test")])
    assert set(make_plan(index, PlanConfig(split="test")).slices["case_id"]) == {"b"}
    assert set(make_plan(index, PlanConfig(split="all")).slices["case_id"]) == {"a", "b"}


@pytest.mark.parametrize("kwargs", [{"ratio": -1.0}, {"neighbours": -1}, {"split": "dev"}, {"epochs": 0},
                                    {"lesion_free": 1.5}])
def test_bad_options_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        PlanConfig(**kwargs)


def test_ratio_text_parses_numbers_and_natural():
    assert parse_ratio("1.75") == 1.75 and parse_ratio("natural") is None
    with pytest.raises(UsageError, match="natural"):
        parse_ratio("lots")


def test_saved_plan_loads_with_rows_and_parameters(tmp_path):
    index = patient("p", range(40, 60), 120)
    plan = make_plan(index, PlanConfig(epochs=3, seed=4))
    loaded = load_plan(save_plan(plan, tmp_path / "plans" / "p.parquet"))
    pd.testing.assert_frame_equal(loaded.slices, plan.slices, check_dtype=False)
    assert loaded.params["seed"] == 4 and loaded.params["index_fingerprint"] == index_fingerprint(index)
    assert [p.name for p in (tmp_path / "plans").iterdir()] == ["p.parquet"]  # no temp file left


def test_a_file_that_is_not_a_plan_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(PlanError, match="ctsample plan"):
        load_plan(tmp_path / "x.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(PlanError, match="not a ctstack plan"):
        load_plan(tmp_path / "y.parquet")
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "missing.parquet")
