"""ctmodel evaluate: oracle and empty predictors give the documented figures on each grid; CSV, JSON, figures, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import model_app
from ctmodel.evaluate import CASE_METRICS, EvaluateConfig, evaluate, evaluate_cases, split_cases, summarize
from ctprep.errors import RunError, UsageError
from ctprep.geometry import describe, forward_mask, inverse_mask
from ctprep.store import SliceStore, StoreLayout
from conftest import SPACING_MM, phantom, ras_affine, save_nifti, save_random_run, to_lps, to_permuted


def _oracle(store: SliceStore):
    """A predictor returning each case's stored true mask (looked up by its image)."""
    masks = {store.read_image(c).tobytes(): store.read_mask(c).astype(np.float32) for c in store.case_ids()}
    return lambda volume: masks[volume.tobytes()]


def test_oracle_scores_perfectly_on_every_metric(tiny_store):
    store = SliceStore.open(tiny_store)
    results = evaluate_cases(store, split_cases(store, "all"), _oracle(store), progress=False)
    summary = summarize(results)
    assert summary["cases"] == 5
    for name, perfect in (("dice", 1.0), ("iou", 1.0), ("nsd", 1.0), ("hd95_mm", 0.0)):
        assert summary["metrics"][name]["mean"] == perfect and summary["metrics"][name]["sd"] == 0.0
    for way in ("empty slices = 1", "empty slices excluded"):
        assert summary["slice_level"][way]["dice"] == 1.0
    assert summary["metrics"]["pred_ml"]["mean"] == summary["metrics"]["true_ml"]["mean"] > 0


def test_empty_prediction_shows_how_empty_slices_inflate_the_slice_mean(tiny_store):
    store = SliceStore.open(tiny_store)
    cases = split_cases(store, "all")
    results = evaluate_cases(store, cases, lambda volume: np.zeros_like(volume), progress=False)
    summary = summarize(results)
    index = store.index()
    empty_slices = int((~index["has_lesion"]).sum())
    assert summary["metrics"]["dice"]["mean"] == 0.0
    assert summary["slice_level"]["empty slices = 1"]["dice"] == pytest.approx(empty_slices / len(index))
    assert summary["slice_level"]["empty slices excluded"]["dice"] == 0.0
    diagonal = [math.dist((0, 0, 0), np.multiply((9, 16, 16), store.geometry(c).stored_spacing_mm)) for c in cases]
    assert summary["metrics"]["hd95_mm"]["mean"] == pytest.approx(np.mean(diagonal))


def test_split_without_labeled_cases_is_refused(tmp_path, tiny_store):
    store = SliceStore.open(tiny_store)
    assert split_cases(store, "test") == ["case4"]
    index = store.index()
    index.loc[index["split"] == "val", "split"] = "train"
    from ctprep.index import write_index
    write_index(tiny_store, index)
    with pytest.raises(RunError, match="no labeled cases in split 'val'"):
        split_cases(SliceStore.open(tiny_store), "val")


def test_evaluate_writes_per_case_csv_summary_json_and_figures(tmp_path, tiny_store):
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = evaluate(run, tiny_store, EvaluateConfig(split="all", device="cpu"), figures=tmp_path / "figs",
                      progress=False)
    table = pd.read_csv(run / "eval-all.csv")
    assert sorted(table["case_id"]) == [f"case{i}" for i in range(5)]
    assert {"dice", "iou", "nsd", "hd95_mm", "slice_dice_empty1", "slice_dice_excl", "network_seconds"} <= set(table)
    saved = json.loads((run / "eval-all.json").read_text())
    assert saved["metrics"]["dice"]["mean"] == pytest.approx(table["dice"].mean())
    assert saved["identity"]["checkpoint"] == "best" and saved["identity"]["epoch"] == 1
    assert sorted(p.name.split("-")[0] for p in result.figures) == ["best", "median", "worst"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.figures)


def test_cli_evaluate_prints_both_slice_conventions(tmp_path, tiny_store):
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    out = tmp_path / "e.csv"
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(tiny_store), "--device", "cpu",
                                            "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "empty slices = 1" in result.output and "empty slices excluded" in result.output
    assert out.exists() and out.with_suffix(".json").exists()


def test_cli_evaluate_refuses_a_store_of_another_layout_with_one_line(tmp_path, tiny_store):
    run = save_random_run(tmp_path / "run", StoreLayout(size=32))
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(tiny_store), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "layout" in result.output


# ---------------------------------------------------------------- which grid: native (source files) vs store


def _convert(tmp_path, cases: dict) -> Path:
    """Write ``{name: (hu, mask, affine)}`` as COVID-19-20 style NIfTI pairs and convert them into a 16x16 store."""
    from ctprep.convert import ConvertConfig, convert

    raw = tmp_path / "raw"
    for name, (hu, mask, affine) in cases.items():
        save_nifti(raw / f"{name}_ct.nii.gz", hu, affine)
        save_nifti(raw / f"{name}_seg.nii.gz", mask.astype(np.uint8) * 255, affine)  # 0/255: nonzero is lesion
    convert(raw, tmp_path / "store.zarr", ConvertConfig(size=16, workers=1), progress=False)
    return tmp_path / "store.zarr"


def _band(volume: np.ndarray) -> np.ndarray:
    """An imperfect, deterministic predictor: lesion HU (-300 -> 0.5) plus whatever the resize blends into the band."""
    return ((volume > 0.35) & (volume < 0.6)).astype(np.float32)


def _by_case(results) -> dict:
    return {r.case_id: r for r in results}


def test_native_grid_scores_the_inverted_prediction_against_the_source_mask(tmp_path, tiny_phantom):
    hu, mask, affine = tiny_phantom
    store = SliceStore.open(_convert(tmp_path, {"p": (hu, mask, affine)}))
    oracle = _oracle(store)  # the stored mask itself: perfect on the store grid by construction
    native, = evaluate_cases(store, ["p"], oracle, progress=False)
    stored, = evaluate_cases(store, ["p"], oracle, progress=False, grid="store")
    # what `ctmodel predict` would write for this prediction: the stored mask resized back, cropped, reoriented
    geom = describe(affine, hu.shape, 16)
    back = inverse_mask(forward_mask(mask, geom), geom).astype(bool)
    overlap, voxel_ml = np.count_nonzero(back & mask), np.prod(SPACING_MM) / 1000.0
    assert (native.grid, stored.grid) == ("native", "store")
    assert stored.metrics.dice == 1.0 and stored.metrics.hd95_mm == 0.0
    expected_dice = 2 * overlap / (back.sum() + mask.sum())
    assert expected_dice < 1.0 and native.metrics.dice == pytest.approx(expected_dice)
    assert native.metrics.iou == pytest.approx(overlap / np.count_nonzero(back | mask))
    assert native.metrics.true_ml == pytest.approx(mask.sum() * voxel_ml)  # the source lesion volume, exactly
    assert native.metrics.pred_ml == pytest.approx(back.sum() * voxel_ml)
    assert stored.metrics.true_ml != pytest.approx(native.metrics.true_ml)  # resizing changed the volume
    assert native.metrics.slices == stored.metrics.slices  # slice-level scores stay on the store grid


def test_lps_and_permuted_sources_give_the_ras_native_scores(tmp_path, tiny_phantom):
    hu, mask, affine = tiny_phantom
    lps_hu, lps_affine = to_lps(hu, affine)
    perm_hu, perm_affine = to_permuted(hu, affine)
    cases = {"ras": (hu, mask, affine), "lps": (lps_hu, to_lps(mask, affine)[0], lps_affine),
             "perm": (perm_hu, to_permuted(mask, affine)[0], perm_affine)}
    store = SliceStore.open(_convert(tmp_path, cases))
    results = _by_case(evaluate_cases(store, ["lps", "perm", "ras"], _band, progress=False))
    ras = results["ras"].metrics
    assert 0.0 < ras.dice < 1.0 and ras.hd95_mm > 0.0  # an imperfect prediction, so every metric is exercised
    for name in ("lps", "perm"):
        assert results[name].grid == "native"
        for metric in CASE_METRICS:
            assert getattr(results[name].metrics, metric) == pytest.approx(getattr(ras, metric)), (name, metric)


def test_missing_source_mask_falls_back_to_the_store_grid_with_one_warning_line(tmp_path):
    store_path = _convert(tmp_path, {"a": (*phantom(seed=0), ras_affine()), "b": (*phantom(seed=1), ras_affine())})
    missing = tmp_path / "raw" / "b_seg.nii.gz"
    missing.unlink()
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(store_path), "--split", "all",
                                            "--device", "cpu"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(missing) in warnings[0] and "store grid" in warnings[0]
    table = pd.read_csv(run / "eval-all.csv").set_index("case_id")
    assert table["grid"].to_dict() == {"a": "native", "b": "store"}
    summary = json.loads((run / "eval-all.json").read_text())
    assert summary["grid"] == "mixed" and summary["grid_cases"] == {"native": 1, "store": 1}
    assert summary["metrics"]["dice"]["grid"] == "mixed" and list(summary["store_grid_fallbacks"]) == ["b"]
    assert summary["metrics_by_grid"]["native"]["dice"]["mean"] == pytest.approx(table.loc["a", "dice"])
    assert all(way["grid"] == "store" for way in summary["slice_level"].values())


def test_changed_source_mask_is_not_trusted(tmp_path, tiny_phantom):
    hu, mask, affine = tiny_phantom
    store = SliceStore.open(_convert(tmp_path, {"p": (hu, mask, affine)}))
    changed = tmp_path / "raw" / "p_seg.nii.gz"
    save_nifti(changed, np.zeros(mask.shape, np.uint8), affine)  # same grid, lesion erased after convert
    result, = evaluate_cases(store, ["p"], _oracle(store), progress=False)
    assert result.grid == "store" and result.metrics.dice == 1.0
    assert result.warning.startswith(f"{changed}: expected the source mask recorded at convert time")


def test_store_without_recorded_sources_is_scored_on_the_store_grid(tiny_store):
    store = SliceStore.open(tiny_store)  # written directly, without convert's source attributes
    results = evaluate_cases(store, ["case0"], _oracle(store), progress=False)
    assert results[0].grid == "store" and summarize(results)["grid"] == "store"
    assert "expected a source mask path recorded for case case0, found none" in results[0].warning


def test_grid_store_evaluation_is_labelled_and_warns_about_nothing(tmp_path):
    store_path = _convert(tmp_path, {"a": (*phantom(seed=0), ras_affine())})
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = evaluate(run, store_path, EvaluateConfig(split="all", device="cpu", grid="store"), progress=False)
    assert result.warnings == [] and result.summary["grid"] == "store"
    assert result.summary["identity"]["grid"] == "store"
    assert pd.read_csv(result.csv_path)["grid"].tolist() == ["store"]


def test_unknown_grid_is_refused_with_one_line(tmp_path, tiny_store):
    with pytest.raises(UsageError, match="--grid scanner: expected one of native, store"):
        EvaluateConfig(grid="scanner")
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = CliRunner().invoke(model_app, ["evaluate", str(run), str(tiny_store), "--grid", "scanner"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
