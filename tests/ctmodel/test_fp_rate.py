"""The slice-level false-positive rate on lesion-free slices: (slices with an empty truth that the prediction marks
with >= 1 voxel) / (slices with an empty truth), per case and pooled, on the grid of the 3-D scores."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ctmodel.compare import RunComparison
from ctmodel.compare_stats import StatsConfig, compare_stats
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.evaluate import CaseScore, native_metrics, split_cases, summarize, summary_rows
from ctmodel.metrics import NO_SLICES, FalsePositiveSlices, case_metrics, false_positive_slices, slice_scores
from ctprep.geometry import describe, forward
from ctprep.splits import SplitConfig
from ctprep.store import SliceStore
from ctsample.resplit import resplit


def volume(shape: tuple[int, int, int], marked: dict[int, tuple[int, int]]) -> np.ndarray:
    """A bool volume with one voxel set at (z, row, col) for each slice z in ``marked``."""
    mask = np.zeros(shape, dtype=bool)
    for z, (row, col) in marked.items():
        mask[z, row, col] = True
    return mask


def test_rate_counts_marked_slices_among_the_lesion_free_ones():
    truth = volume((5, 4, 4), {1: (0, 0), 2: (1, 1)})  # lesion on slices 1 and 2
    pred = volume((5, 4, 4), {0: (3, 3), 2: (1, 1), 4: (2, 2)})  # slice 2 is a hit, not a false positive
    lesion_free = [z for z in range(5) if not truth[z].any()]  # 0, 3, 4
    marked = [z for z in lesion_free if pred[z].any()]  # 0, 4
    fp = false_positive_slices(pred, truth)
    assert (fp.empty_truth, fp.false_positive) == (len(lesion_free), len(marked)) == (3, 2)
    assert fp.rate == pytest.approx(2 / 3)


def test_one_voxel_is_enough_and_a_case_without_lesion_free_slices_has_no_rate():
    truth = np.ones((3, 4, 4), dtype=bool)
    assert math.isnan(false_positive_slices(truth, truth).rate)  # nothing to be wrong on: NaN, not 0
    empty = np.zeros((3, 4, 4), dtype=bool)
    assert false_positive_slices(volume((3, 4, 4), {1: (0, 0)}), empty).rate == pytest.approx(1 / 3)
    assert false_positive_slices(empty, empty) == FalsePositiveSlices(3, 0)


def test_pooling_adds_counts_so_big_cases_weigh_more_than_a_mean_of_rates():
    a, b = FalsePositiveSlices(empty_truth=3, false_positive=1), FalsePositiveSlices(empty_truth=1, false_positive=0)
    assert (a + b).rate == pytest.approx((1 + 0) / (3 + 1))  # 0.25, where the mean of the rates is 1/6
    assert sum([a, b], NO_SLICES) == a + b


@settings(max_examples=50, deadline=None)
@given(arrays(bool, (6, 3, 3)), arrays(bool, (6, 3, 3)))
def test_rate_equals_a_slice_by_slice_count(pred, truth):
    empty = [z for z in range(6) if not truth[z].any()]
    fp = false_positive_slices(pred, truth)
    assert (fp.empty_truth, fp.false_positive) == (len(empty), sum(bool(pred[z].any()) for z in empty))
    assert math.isnan(fp.rate) if not empty else 0.0 <= fp.rate <= 1.0


def test_case_metrics_carry_the_counts_into_the_per_case_row():
    truth = volume((4, 8, 8), {1: (4, 4)})
    pred = volume((4, 8, 8), {0: (1, 1), 1: (4, 4)})
    row = case_metrics(pred, truth, (1.0, 1.0, 1.0)).row()
    assert (row["empty_truth_slices"], row["fp_slices"], row["fp_rate"]) == (3, 1, pytest.approx(1 / 3))


def test_native_grid_counts_the_source_files_axial_slices():
    """A RAS file stores (X, Y, Z): axial slices are its last axis, not its first."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    truth = np.zeros((8, 8, 5), dtype=bool)
    truth[2:5, 2:5, 1] = True  # lesion on axial slice 1 only
    pred = truth.copy()
    pred[6, 6, 3] = True  # one false-positive voxel on axial slice 3
    geom = describe(affine, truth.shape, size=8)  # 8 x 8 planes stored at 8: no resize
    probs = forward(pred.astype(np.float32), geom, 0.0)
    stored_truth = forward(truth.astype(np.float32), geom, 0.0) >= 0.5
    metrics = native_metrics(probs, truth, geom, 0.5, 1.0, slice_scores(probs >= 0.5, stored_truth))
    assert (metrics.fp_slices.empty_truth, metrics.fp_slices.false_positive) == (5 - 1, 1)
    assert false_positive_slices(pred, truth).empty_truth != 4  # counting along the file's first axis would differ


def score(case_id: str, fp: FalsePositiveSlices) -> CaseScore:
    """A CaseScore whose only informative figure is its false-positive count."""
    metrics = case_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), (1.0, 1.0, 1.0))
    metrics = type(metrics)(**{**{k: getattr(metrics, k) for k in asdict(metrics)}, "fp_slices": fp})
    return CaseScore(case_id, metrics, 0.0, 0, np.zeros((2, 2), bool))


def test_summary_pools_the_rate_and_the_table_prints_it():
    summary = summarize([score("a", FalsePositiveSlices(3, 1)), score("b", FalsePositiveSlices(1, 0))])
    assert summary["fp_slices"] == {"rate": 0.25, "false_positive": 1, "empty_truth": 4, "grid": "store"}
    assert summary["metrics"]["fp_rate"]["mean"] == pytest.approx((1 / 3 + 0) / 2)  # per case, then averaged
    row = [r for r in summary_rows(summary) if "FP rate" in r[0]]
    assert row == [("slice FP rate on lesion-free slices (pooled, store grid)", "0.250", "1 of 4 slices")]


def run(name: str, rates: dict[str, float]) -> RunComparison:
    """A compared run with per-case FP rates only (NaN: a case without lesion-free slices)."""
    cases = pd.DataFrame({"case_id": list(rates), "fp_rate": list(rates.values())})
    summary = {"metrics": {"fp_rate": {"mean": float(cases["fp_rate"].mean())}}, "network_seconds_per_case": 0.1}
    config = {"model": asdict(ModelConfig(width=12 if name == "a" else 16)), "train": asdict(TrainConfig())}
    return RunComparison(Path(name), summary, {}, "dual-encoder", False, config, cases)


def test_compare_pairs_fp_rates_by_case_and_leaves_out_cases_without_a_rate():
    a = run("a", {"c1": 0.2, "c2": 0.1, "c3": math.nan})
    b = run("b", {"c1": 0.1, "c2": 0.0, "c3": 0.5})
    stats = compare_stats([a, b], StatsConfig(resamples=50))
    (fp,) = [d for d in stats.differences if d.metric == "fp_rate"]
    assert fp.cases == 2 and fp.mean == pytest.approx(((0.1 - 0.2) + (0.0 - 0.1)) / 2)
    dice = [d for d in stats.differences if d.metric == "dice"]
    assert dice[0].cases == 0  # evaluations without a column pair nothing instead of failing


def test_val_of_a_fold_run_is_its_held_out_fold(tiny_store, tmp_path):
    csv = tmp_path / "folds.csv"
    csv.write_text("case_id,split,fold\ncase0,train,0\ncase1,train,1\ncase2,train,0\ncase3,val,1\ncase4,test,\n")
    resplit(tiny_store, SplitConfig(csv=csv), folds=2)
    store = SliceStore.open(tiny_store)
    assert split_cases(store, "val") == ["case3"]  # the store's own val split
    assert split_cases(store, "val", fold=0) == ["case0", "case2"]  # out-of-fold for a fold-0 run
    assert split_cases(store, "test", fold=0) == ["case4"]
