"""`ctsample plan --lesion-by`: which slices count as lesion slices with several raters, the before/after row of
the slices only some raters marked, and the consensus default leaving plans exactly as they were."""
from __future__ import annotations

import pandas as pd
import pytest

from ctprep.errors import UsageError
from ctprep.index import case_rows
from ctsample.plan import PARTIAL_ROW, PlanConfig, default_plan_path, make_plan, summary_rows
from ctsample.stats import overall_rows, patient_stats

# One 3-rater patient of 10 slices: raters_with_lesion per slice, and the majority consensus (>= 2 of 3).
MARKED = [0, 0, 1, 2, 3, 3, 2, 1, 0, 0]
CONSENSUS = [7 if m >= 2 else 0 for m in MARKED]


def three_raters() -> pd.DataFrame:
    """The hand index: one 3-rater patient (MARKED) and one 1-rater patient with lesion slices 4..5 of 8."""
    multi = case_rows("multi", 10, CONSENSUS, "train", n_raters=3, raters_with_lesion=MARKED)
    single = case_rows("single", 8, [5 if z in (4, 5) else 0 for z in range(8)], "train")
    return pd.concat([multi, single], ignore_index=True)


def lesion_slices(plan, case_id: str) -> list[int]:
    rows = plan.slices[(plan.slices["case_id"] == case_id) & (plan.slices["role"] == "lesion")]
    return sorted(rows["slice"].tolist())


@pytest.mark.parametrize("rule, expected", [
    ("consensus", [z for z, m in enumerate(MARKED) if m >= 2]),  # the stored mask (majority)
    ("any", [z for z, m in enumerate(MARKED) if m >= 1]),
    ("all", [z for z, m in enumerate(MARKED) if m == 3]),
])
def test_lesion_by_picks_the_lesion_slices_of_its_rule(rule, expected):
    plan = make_plan(three_raters(), PlanConfig(ratio=0, neighbours=0, lesion_by=rule))
    assert lesion_slices(plan, "multi") == expected
    assert lesion_slices(plan, "single") == [4, 5]  # one rater: every rule is that rater


def test_consensus_default_plans_exactly_as_before_and_records_other_rules():
    index = three_raters()
    default, explicit = make_plan(index, PlanConfig()), make_plan(index, PlanConfig(lesion_by="consensus"))
    pd.testing.assert_frame_equal(default.slices, explicit.slices)
    assert "lesion_by" not in default.params  # the parameters (and so the file bytes) are today's
    assert make_plan(index, PlanConfig(lesion_by="any")).params["lesion_by"] == "any"
    assert default_plan_path("s.zarr", PlanConfig()).name == "train-r1.75-k1-e1-s0.parquet"
    assert default_plan_path("s.zarr", PlanConfig(lesion_by="all")).name == "train-r1.75-k1-e1-s0-all.parquet"


def test_partial_row_counts_the_slices_only_some_raters_marked():
    plan = make_plan(three_raters(), PlanConfig(ratio=0, neighbours=1, lesion_by="consensus"))
    row = dict(zip(("split", "patients", "lesion_free", "lesion", "neighbour", "fill", "empty_before"),
                   summary_rows(plan)[-1]))
    partial = [z for z, m in enumerate(MARKED) if 0 < m < 3]  # 2, 3, 6, 7
    lesion = [z for z in partial if MARKED[z] >= 2]  # 3, 6: the consensus marks them
    neighbours = [z for z in partial if z not in lesion]  # 2 and 7 sit next to lesion slices 3 and 6
    assert row["split"] == PARTIAL_ROW
    assert (row["patients"], row["lesion"], row["empty_before"]) == (1, len(lesion), len(partial) - len(lesion))
    assert (row["neighbour"], row["fill"]) == (str(len(neighbours)), "0")


def test_no_partial_row_without_a_multi_rater_case():
    single = case_rows("single", 8, [5 if z in (4, 5) else 0 for z in range(8)], "train")
    assert all(r[0] != PARTIAL_ROW for r in summary_rows(make_plan(single, PlanConfig())))


def test_unknown_rule_is_a_usage_error():
    with pytest.raises(UsageError, match="--lesion-by most"):
        PlanConfig(lesion_by="most")


def test_stats_report_raters_per_case_and_disagreement():
    table = patient_stats(three_raters())
    assert table.set_index("case_id")["n_raters"].to_dict() == {"multi": 3, "single": 1}
    disagree = sum(0 < m < 3 for m in MARKED)
    assert table.set_index("case_id")["disagree_slices"].to_dict() == {"multi": disagree, "single": 0}
    rows = dict(overall_rows(table, unlabeled=0))
    assert rows["raters per case (min-max)"] == "1-3"
    assert rows["rater disagreement slices"] == f"{disagree} ({100 * disagree / 18:.1f} %)"
