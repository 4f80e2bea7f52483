"""Evaluation with several raters: scores against each rater (mean / min / max), the inter-rater ceiling, the native
consensus rebuilt from the raters' source files, and one-rater evaluation exactly as before raters existed."""
from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import model_app
from ctmodel.evaluate import (CASE_METRICS, EvaluateConfig, evaluate, evaluate_cases, source_raters, source_truth,
                              summarize, summary_rows)
from ctmodel.metrics import dice, iou, surface_metrics
from ctmodel.raters_eval import RATER_METRICS, rater_scores
from ctprep.convert import ConvertConfig, convert
from ctprep.geometry import inverse_mask
from ctprep.preprocess import preprocess_mask
from ctprep.raters import consensus
from ctprep.store import SliceStore, StoreLayout
from conftest import build_store, phantom, ras_affine, save_nifti, save_random_run, to_lps, to_permuted

SPACING = (2.0, 1.0, 1.0)


def three_raters(lesion: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-made annotators of one lesion: r1 the truth, r2 one voxel wider in x, r3 only its upper half."""
    wide = lesion | np.roll(lesion, 1, axis=0) | np.roll(lesion, -1, axis=0)
    upper = lesion.copy()
    upper[:, :, : int(np.flatnonzero(lesion.any(axis=(0, 1))).mean())] = False
    return {"r1": lesion, "r2": wide, "r3": upper}


def convert_raters(tmp_path: Path, cases: dict[str, tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]) -> Path:
    """Write ``{name: (hu, {rater: mask}, affine)}`` as NAME_ct + NAME_seg_<rater> files and convert them (16x16)."""
    raw = tmp_path / "raw"
    for name, (hu, raters, affine) in cases.items():
        save_nifti(raw / f"{name}_ct.nii.gz", hu, affine)
        for rater, mask in raters.items():
            save_nifti(raw / f"{name}_seg_{rater}.nii.gz", mask.astype(np.uint8), affine)
    convert(raw, tmp_path / "store.zarr", ConvertConfig(size=16, workers=1), progress=False)
    return tmp_path / "store.zarr"


def _band(volume: np.ndarray) -> np.ndarray:
    """An imperfect, deterministic predictor: lesion HU (-300 -> 0.5) plus whatever the resize blends into the band."""
    return ((volume > 0.35) & (volume < 0.6)).astype(np.float32)


def test_per_rater_scores_and_the_inter_rater_ceiling_on_a_hand_example():
    pred = np.zeros((1, 2, 4), bool)
    pred[0, 0, :] = True  # 4 voxels
    a, b, c = pred.copy(), np.zeros_like(pred), np.zeros_like(pred)
    b[0, 0, :2] = True  # 2 of the predicted voxels
    c[0, 1, :] = True  # the other row: disjoint from everything
    scores = rater_scores(pred, {"a": a, "b": b, "c": c}, SPACING, 1.0)
    # prediction vs a: identical (Dice 1); vs b: 2*2/(4+2) = 2/3, IoU 2/4; vs c: disjoint, 0
    assert scores.rater_ids == ("a", "b", "c")
    assert scores.spread("dice", "mean") == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert (scores.spread("dice", "min"), scores.spread("dice", "max")) == (0.0, 1.0)
    assert scores.spread("iou", "mean") == pytest.approx((1 + 0.5 + 0) / 3)
    # raters against each other: a-b 2/3, a-c 0, b-c 0 -> mean 2/9
    assert scores.interrater[RATER_METRICS.index("dice")] == pytest.approx(2 / 9)
    assert scores.interrater[RATER_METRICS.index("iou")] == pytest.approx(0.5 / 3)
    expected_hd = np.mean([surface_metrics(x, y, SPACING, 1.0)[1] for x, y in ((a, b), (a, c), (b, c))])
    assert scores.interrater[RATER_METRICS.index("hd95_mm")] == pytest.approx(expected_hd) and expected_hd > 0
    row = scores.row()
    assert row["n_raters"] == 3 and row["dice_rater_max"] == 1.0 and row["dice_interrater"] == pytest.approx(2 / 9)
    assert set(row) == {"n_raters", *(f"{m}_rater_{how}" for m in RATER_METRICS for how in ("mean", "min", "max")),
                        *(f"{m}_interrater" for m in RATER_METRICS)}


def test_one_rater_gives_no_rater_scores():
    mask = np.ones((1, 2, 2), bool)
    assert rater_scores(mask, {"1": mask}, SPACING, 1.0) is None


def test_store_grid_scores_each_stored_rater_and_every_pair(tmp_path):
    hu, lesion = phantom()
    store_path = build_store(tmp_path / "s.zarr", {"a": (hu, None, ras_affine())}, {"a": "test"},
                             raters={"a": three_raters(lesion)})
    store = SliceStore.open(store_path)
    result, = evaluate_cases(store, ["a"], _band, progress=False, grid="store")
    pred = _band(store.read_image("a")) >= 0.5
    stored = store.read_raters("a").astype(bool)
    spacing = store.geometry("a").stored_spacing_mm
    per_rater = [dice(pred, r) for r in stored]
    assert 0 < min(per_rater) < max(per_rater) < 1  # an imperfect prediction, raters that differ
    row = result.row()
    assert row["n_raters"] == 3 and result.grid == "store"
    assert row["dice_rater_mean"] == pytest.approx(np.mean(per_rater))
    assert (row["dice_rater_min"], row["dice_rater_max"]) == pytest.approx((min(per_rater), max(per_rater)))
    assert row["iou_rater_mean"] == pytest.approx(np.mean([iou(pred, r) for r in stored]))
    nsd_hd = [surface_metrics(pred, r, spacing, 1.0) for r in stored]
    assert row["nsd_rater_max"] == pytest.approx(max(n for n, _ in nsd_hd))
    assert row["hd95_mm_rater_min"] == pytest.approx(min(h for _, h in nsd_hd))
    pairs = list(combinations(stored, 2))
    assert row["dice_interrater"] == pytest.approx(np.mean([dice(x, y) for x, y in pairs]))
    assert row["nsd_interrater"] == pytest.approx(np.mean([surface_metrics(x, y, spacing, 1.0)[0] for x, y in pairs]))
    assert row["dice"] == pytest.approx(dice(pred, store.read_mask("a")))  # vs consensus: today's column


def test_native_consensus_is_rebuilt_from_the_raters_source_files(tmp_path):
    """The known gap: named raters leave source.mask null; the native truth is the consensus of their files."""
    hu, lesion = phantom()
    raters = three_raters(lesion)
    store = SliceStore.open(convert_raters(tmp_path, {"a": (hu, raters, ras_affine())}))
    assert store.case_attrs("a")["source"]["mask"] is None
    geom = store.geometry("a")
    np.testing.assert_array_equal(source_truth(store, "a", geom), consensus(list(raters.values()), "majority"))
    result, = evaluate_cases(store, ["a"], _band, progress=False)
    assert result.grid == "native" and result.warning is None
    back = inverse_mask(_band(store.read_image("a")), geom).astype(bool)  # predict's restore step
    truth = consensus(list(raters.values()), "majority")
    assert result.metrics.dice == pytest.approx(dice(back, truth)) and 0 < result.metrics.dice < 1
    row = result.row()
    assert row["dice_rater_mean"] == pytest.approx(np.mean([dice(back, m) for m in raters.values()]))
    pairs = list(combinations(raters.values(), 2))
    assert row["dice_interrater"] == pytest.approx(np.mean([dice(x, y) for x, y in pairs]))
    assert row["iou_interrater"] == pytest.approx(np.mean([iou(x, y) for x, y in pairs]))


def test_a_changed_rater_file_sends_the_case_to_the_store_grid(tmp_path):
    hu, lesion = phantom()
    raters = three_raters(lesion)
    store = SliceStore.open(convert_raters(tmp_path, {"a": (hu, raters, ras_affine())}))
    changed = tmp_path / "raw" / "a_seg_r2.nii.gz"
    save_nifti(changed, np.zeros(lesion.shape, np.uint8), ras_affine())
    result, = evaluate_cases(store, ["a"], _band, progress=False)
    assert result.grid == "store" and result.warning.startswith(f"{changed}: expected the source mask recorded")
    assert result.row()["n_raters"] == 3  # still scored against each (stored) rater


@pytest.mark.parametrize("turn", [to_lps, to_permuted], ids=["lps", "permuted"])
def test_lps_and_permuted_rater_files_are_read_back_as_the_store_grid_raters(tmp_path, turn):
    hu, lesion = phantom()
    raters = three_raters(lesion)
    turned_hu, affine = turn(hu, ras_affine())
    cases = {"ras": (hu, raters, ras_affine()),
             "turned": (turned_hu, {r: turn(m, ras_affine())[0] for r, m in raters.items()}, affine)}
    store = SliceStore.open(convert_raters(tmp_path, cases))
    geom = store.geometry("turned")
    native = source_raters(store, "turned", geom)
    assert list(native) == ["r1", "r2", "r3"]
    for i, mask in enumerate(native.values()):  # the documented geometry: preprocess_mask is the store-grid rule
        np.testing.assert_array_equal(preprocess_mask(mask, geom), store.read_raters("turned")[i])
    results = {r.case_id: r.row() for r in evaluate_cases(store, ["ras", "turned"], _band, progress=False)}
    assert results["turned"]["grid"] == "native"
    for column in ("dice", *(f"{m}_rater_{how}" for m in RATER_METRICS for how in ("mean", "min", "max")),
                   *(f"{m}_interrater" for m in RATER_METRICS)):
        assert results["turned"][column] == pytest.approx(results["ras"][column]), column


# what `ctmodel evaluate` wrote per case before raters existed: a one-rater store still gets exactly these
ONE_RATER_COLUMNS = ["case_id", "grid", "dice", "iou", "nsd", "hd95_mm", "pred_ml", "true_ml", "slice_dice_empty1",
                     "slice_iou_empty1", "slice_dice_excl", "slice_iou_excl", "n_slices", "n_empty_slices",
                     "slice_dice_sum", "slice_iou_sum", "fp_rate", "empty_truth_slices", "fp_slices",
                     "network_seconds"]
ONE_RATER_SUMMARY = ["cases", "grid", "grid_cases", "store_grid_fallbacks", "metrics", "metrics_by_grid",
                     "slice_level", "fp_slices", "network_seconds_per_case", "network_ms_per_slice"]


def test_one_rater_evaluation_is_unchanged(tmp_path):
    hu, lesion = phantom()
    raw = tmp_path / "raw"
    save_nifti(raw / "p_ct.nii.gz", hu, ras_affine())
    save_nifti(raw / "p_seg.nii.gz", lesion.astype(np.uint8), ras_affine())
    convert(raw, tmp_path / "store.zarr", ConvertConfig(size=16, workers=1), progress=False)
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = evaluate(run, tmp_path / "store.zarr", EvaluateConfig(split="all", device="cpu"), progress=False)
    assert result.results[0].grid == "native" and result.reliability_png is None
    assert pd.read_csv(result.csv_path).columns.tolist() == ONE_RATER_COLUMNS
    assert list(json.loads(result.json_path.read_text())) == ["identity", *ONE_RATER_SUMMARY]
    labels = [row[0] for row in summary_rows(result.summary)]
    assert labels[0] == "dice (3-D per case, native grid)" and not any("rater" in label for label in labels)
    assert not list(tmp_path.glob("run/*.png"))


def test_mixed_store_leaves_one_rater_cases_out_of_the_rater_figures(tmp_path):
    hu, lesion = phantom()
    hu1, lesion1 = phantom(seed=1)
    store_path = build_store(tmp_path / "s.zarr", {"multi": (hu, None, ras_affine()),
                                                   "single": (hu1, lesion1, ras_affine())},
                             {"multi": "test", "single": "test"}, raters={"multi": three_raters(lesion)})
    store = SliceStore.open(store_path)
    results = evaluate_cases(store, ["multi", "single"], _band, progress=False, grid="store")
    table = pd.DataFrame([r.row() for r in results]).set_index("case_id")
    assert math.isnan(table.loc["single", "dice_rater_mean"]) and table.loc["multi", "n_raters"] == 3
    summary = summarize(results)["raters"]
    assert summary["cases"] == 1
    assert summary["vs each rater (mean / min / max)"]["dice"]["mean"]["mean"] == pytest.approx(
        table.loc["multi", "dice_rater_mean"])
    assert summary["inter-rater ceiling"]["dice"]["mean"] == pytest.approx(table.loc["multi", "dice_interrater"])
    assert summary["vs consensus"]["dice"]["mean"] == pytest.approx(table.loc["multi", "dice"])


def test_cli_prints_the_three_labelled_blocks(tmp_path):
    hu, lesion = phantom()
    store_path = convert_raters(tmp_path, {"a": (hu, three_raters(lesion), ras_affine())})
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(store_path), "--split", "all",
                                            "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for label in ("dice vs consensus (3-D per case, native grid)", "true_ml of consensus (3-D per case",
                  "dice vs each rater, mean / min / max over raters (1 multi-rater cases, native grid)",
                  "dice inter-rater ceiling, mean over rater pairs (1 multi-rater cases, native grid)"):
        assert label in result.output
    assert "dice vs consensus (1 multi-rater" not in result.output  # every case has raters: said once
    columns = pd.read_csv(run / "eval-all.csv").columns
    assert {*CASE_METRICS, "dice_rater_mean", "hd95_mm_rater_max", "nsd_interrater"} <= set(columns)
