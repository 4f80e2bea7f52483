"""Calibration against the rater fraction: ECE over 10 equal-width bins on a hand example, the calibration region,
pooling, and the reliability PNG that `ctmodel evaluate` writes for soft/ugs runs or with --calibration."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import model_app
from ctmodel.calibration import EMPTY, N_BINS, bin_of, reliability, write_reliability
from ctmodel.evaluate import EvaluateConfig, evaluate, summary_rows
from ctprep.store import StoreLayout
from conftest import build_store, phantom, ras_affine, save_random_run


def test_ece_equals_the_hand_computed_value():
    # 5 voxels, 2 raters; every voxel is in the region (a rater or the prediction is positive)
    probs = np.array([0.95, 0.85, 0.60, 0.55, 0.05])
    raters = np.array([[1, 1, 1, 0, 1],
                       [1, 0, 0, 0, 0]], bool)  # rater fraction: 1, 0.5, 0.5, 0, 0.5
    rel = reliability(probs, raters, threshold=0.5)
    # bins: 9 <- 0.95 (fraction 1); 8 <- 0.85 (0.5); 6 <- 0.60 (0.5); 5 <- 0.55 (0); 0 <- 0.05 (0.5)
    # ECE = sum n_b / N * |mean fraction - mean probability| = (0.05 + 0.35 + 0.10 + 0.55 + 0.45) / 5 = 0.30
    assert rel.ece == pytest.approx(0.30)
    assert rel.counts == (1, 0, 0, 0, 0, 1, 1, 0, 1, 1) and rel.voxels == 5
    # merge the two voxels of bins 8 and 9 into one bin: their gaps average out before weighting
    merged = reliability(np.array([0.95, 0.91]), np.array([[1, 1], [1, 0]], bool))  # fractions 1, 0.5
    assert merged.ece == pytest.approx(abs((1 + 0.5) / 2 - (0.95 + 0.91) / 2))


def test_background_outside_the_calibration_region_does_not_count():
    probs = np.array([0.9, 0.3, 0.2, 0.0])
    raters = np.array([[1, 0, 0, 0]], bool)
    rel = reliability(probs, raters, threshold=0.5)
    assert rel.voxels == 1 and rel.ece == pytest.approx(0.1)  # only the predicted-and-marked voxel: |1 - 0.9|
    assert reliability(probs, np.zeros((1, 4), bool), threshold=0.5).voxels == 1  # the predicted voxel alone
    assert np.isnan(reliability(np.zeros(4), np.zeros((2, 4), bool)).ece)  # empty region: NaN, not 0


def test_bins_are_left_closed_and_one_joins_the_last():
    assert bin_of(np.array([0.0, 0.0999, 0.1, 0.5, 0.9, 1.0])).tolist() == [0, 0, 1, 5, 9, 9]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3)), min_size=1, max_size=40))
def test_cases_pool_exactly_and_ece_is_in_0_1(voxels):
    probs = np.array([p for p, _ in voxels])
    raters = np.array([[k > r for _, k in voxels] for r in range(3)])  # k of 3 raters mark the voxel
    half = len(voxels) // 2
    pooled = reliability(probs[:half], raters[:, :half]) + reliability(probs[half:], raters[:, half:])
    whole = reliability(probs, raters)
    assert pooled.counts == whole.counts
    assert pooled.ece == pytest.approx(whole.ece, nan_ok=True)
    assert np.isnan(whole.ece) or 0.0 <= whole.ece <= 1.0


def test_probabilities_equal_to_the_rater_fraction_are_perfectly_calibrated():
    raters = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]], bool)  # fractions 1, .5, .25, .25
    assert reliability(raters.mean(axis=0), raters).ece == pytest.approx(0.0)


def test_reliability_png_is_written(tmp_path):
    rel = reliability(np.array([0.95, 0.85, 0.6, 0.05]), np.array([[1, 1, 0, 1], [1, 0, 0, 0]], bool))
    path = write_reliability(rel, tmp_path / "r.png", "hand example")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_reliability(EMPTY, tmp_path / "empty.png", "no voxels").exists()  # no crash on an empty region


def _two_rater_store(tmp_path: Path) -> Path:
    hu, lesion = phantom()
    wide = lesion | np.roll(lesion, 1, axis=0)
    return build_store(tmp_path / "s.zarr", {"a": (hu, None, ras_affine())}, {"a": "test"},
                       raters={"a": {"r1": lesion, "r2": wide}})


def test_evaluate_with_calibration_writes_ece_columns_summary_and_the_png_beside_the_csv(tmp_path):
    store = _two_rater_store(tmp_path)
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    out = tmp_path / "out" / "scores.csv"
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(store), "--device", "cpu", "--grid", "store",
                                            "--out", str(out), "--calibration"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    png = tmp_path / "out" / "scores-reliability.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "reliability diagram" in result.output
    summary = json.loads(out.with_suffix(".json").read_text())["calibration"]
    table = pd.read_csv(out)
    assert summary["ece"] == pytest.approx(table.loc[0, "ece"])  # one case: the pooled ECE is the case's
    assert summary["voxels"] == table.loc[0, "calibration_voxels"] > 0 and len(summary["bins"]) == N_BINS
    assert sum(b["voxels"] for b in summary["bins"]) == summary["voxels"] and summary["grid"] == "store"
    assert "ECE vs rater fraction (10 bins" in result.output


def _set_target(run: Path, target: str) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "train": {"target": target}}))


@pytest.mark.parametrize(("target", "calibrated"), [("soft", True), ("ugs", True), ("union", False)])
def test_soft_and_ugs_runs_are_calibrated_without_asking(tmp_path, target, calibrated):
    store = _two_rater_store(tmp_path)
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    _set_target(run, target)
    result = evaluate(run, store, EvaluateConfig(split="test", device="cpu", grid="store"), progress=False)
    assert (result.reliability_png is not None) == calibrated
    assert ("calibration" in result.summary) == calibrated
    assert (run / "eval-test-reliability.png").exists() == calibrated
    assert any(row[0].startswith("ECE") for row in summary_rows(result.summary)) == calibrated


def test_native_grid_calibration_uses_the_restored_probabilities_and_the_raters_source_files(tmp_path):
    from ctmodel.backends import restore_numpy
    from ctmodel.evaluate import evaluate_cases
    from ctprep.store import SliceStore
    from test_rater_scores import convert_raters, three_raters

    hu, lesion = phantom()
    raters = three_raters(lesion)
    store = SliceStore.open(convert_raters(tmp_path, {"a": (hu, raters, ras_affine())}))
    soft = lambda volume: np.clip(volume, 0, 1).astype(np.float32)  # graded probabilities, not just 0/1
    result, = evaluate_cases(store, ["a"], soft, progress=False, calibration=True)
    probs = restore_numpy(soft(store.read_image("a")), store.geometry("a"), 0.5, probabilities=True)[0]
    expected = reliability(probs, np.stack(list(raters.values())), 0.5)
    assert result.grid == "native" and result.reliability.counts == expected.counts
    assert result.reliability.ece == pytest.approx(expected.ece) and 0 < expected.ece < 1
