"""ctmodel evaluate: oracle and empty predictors give the documented figures; CSV, JSON, figures and CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import model_app
from ctmodel.evaluate import EvaluateConfig, evaluate, evaluate_cases, split_cases, summarize
from ctprep.errors import RunError
from ctprep.store import SliceStore, StoreLayout
from conftest import save_random_run


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
