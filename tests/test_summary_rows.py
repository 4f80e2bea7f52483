"""The rows the CLI summaries print come from the library that owns each result: the printed ratio text, the plan's
per-split and off-target rows, the stats' per-patient rows, the train summary and run files, verify's report."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ctprep.console import print_problems, ratio_text
from ctprep.index import case_rows
from ctprep.verify import Damage, RepairReport, VerifyReport, print_report
from ctsample.plan import OFF_TARGET_HEADERS, SUMMARY_HEADERS, PlanConfig, make_plan, off_target_rows, summary_rows
from ctsample.stats import StoreStats, patient_stats


def patient(case_id: str, lesion_slices: range, n_slices: int) -> pd.DataFrame:
    return case_rows(case_id, n_slices, [7 if z in lesion_slices else 0 for z in range(n_slices)], "train")


@pytest.mark.parametrize(("value", "missing", "digits", "text"), [
    (1.7761, "no lesion slices", 3, "1.776"), (math.nan, "no lesion slices", 3, "no lesion slices"),
    (1.7761, "-", 2, "1.78"), (math.nan, "-", 2, "-")])
def test_ratio_text_has_one_rule_for_summaries_and_table_cells(value, missing, digits, text):
    assert ratio_text(value, missing=missing, digits=digits) == text
    assert ratio_text(0.5) == "0.500"  # the defaults are the summaries' form


def test_plan_rows_follow_their_headers_and_name_the_patient_off_target():
    index = pd.concat([patient("met", range(40, 60), 120), patient("short", range(0, 30), 40)])
    plan = make_plan(index, PlanConfig(ratio=1.75))
    rows = summary_rows(plan)
    assert [len(r) for r in rows] == [len(SUMMARY_HEADERS)]  # one split: no total row
    lesion, empty_after = 20 + 30, 35 + 10  # "short" has only 10 empty slices for its target of 53
    assert rows[0][SUMMARY_HEADERS.index("ratio after")] == f"{empty_after / lesion:.2f}"
    # its 10 empty slices: slice 30 is the neighbour of lesion slice 29, the other 9 are fill
    assert off_target_rows(plan) == [("short", 30, 1, 9, 53, "only 10 empty slices, target 53")]
    assert len(OFF_TARGET_HEADERS) == len(off_target_rows(plan)[0])
    assert PlanConfig(ratio=None).ratio_name == "natural" and PlanConfig(ratio=2.0).ratio_name == "2"


def test_stats_rows_print_a_dash_for_a_patient_without_lesion_slices():
    index = pd.concat([patient("lesion", range(10, 15), 40), patient("healthy", range(0), 30)])
    result = StoreStats(patient_stats(index, "all", 2), unlabeled=0, neighbours=2)
    rows = {row[0]: row for row in result.patient_rows()}
    assert result.patient_headers()[-1] == "neighbours (k=2)"
    assert rows["lesion"][5] == f"{35 / 5:.2f}" and rows["healthy"][5] == "-"
    assert rows["healthy"][6] == "100.0"


def test_train_result_lists_every_run_file_inside_its_folder():
    from ctmodel.train import TrainResult

    summary = {"model": "unet2d", "width": 4, "parameters": 10, "epochs": 1, "best_epoch": 1, "best_val_dice_3d": 0.5,
               "final_val_dice_3d": 0.5, "final_val_dice_slice": 0.4, "samples_per_s": 9.0, "train_seconds": 1.0,
               "peak_memory_mb": 3.0}
    result = TrainResult(Path("runs/r"), summary, [])
    assert dict(result.summary_rows())["model"] == "unet2d (width 4)" and len(result.summary_rows()) == 10
    assert [name for name, _ in result.files()] == ["config.json", "metrics.csv", "curves.png", "best.pt", "last.pt",
                                                    "summary.json"]
    assert all(path.parent == Path("runs/r") for _, path in result.files())


def test_verify_report_prints_repairs_on_stdout_and_what_was_left_on_stderr(capsys):
    before = VerifyReport(Path("s.zarr"), cases=2, damaged=[Damage("a", "bad"), Damage("b", "bad")])
    after = VerifyReport(Path("s.zarr"), cases=2, damaged=[Damage("b", "bad")])
    print_report(after, RepairReport(before, after, reconverted=["a"], not_in_raw=["b"]))
    out, err = capsys.readouterr()
    assert "damaged before repair: 2; re-converted: a" in out and out.rstrip().endswith("2 cases checked, 1 damaged")
    assert err == "warning: b: no source in RAW; left damaged\n"


def test_problems_print_warnings_then_failures_on_stderr(capsys):
    print_problems(["x.nii: odd"], ["y.nii: unreadable"])
    out, err = capsys.readouterr()
    assert out == "" and err == "warning: x.nii: odd\nfailed: y.nii: unreadable\n"
