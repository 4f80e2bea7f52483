"""ctmodel evaluate --out/--figures never write over a store's own files; refused before the run is loaded."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import model_app
from ctprep.store import StoreLayout
from conftest import save_random_run


def _store_bytes(store: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _evaluate(tmp_path: Path, store: Path, *options) -> object:
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    return CliRunner().invoke(model_app, ["evaluate", str(run), str(store), "--device", "cpu", "--grid", "store",
                                          *map(str, options)])


@pytest.mark.parametrize("relative", ["index.parquet", "zarr.csv", "cases/case4/scores.csv"])
def test_evaluate_out_into_a_reserved_file_is_refused(tiny_store, tmp_path, relative):
    """zarr.csv is refused because its summary JSON would be STORE/zarr.json."""
    before = _store_bytes(tiny_store)
    result = _evaluate(tmp_path, tiny_store, "--out", tiny_store / relative)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "reserved" in result.output
    assert _store_bytes(tiny_store) == before


def test_evaluate_figures_inside_cases_are_refused(tiny_store, tmp_path):
    before = _store_bytes(tiny_store)
    result = _evaluate(tmp_path, tiny_store, "--out", tmp_path / "e.csv", "--figures", tiny_store / "cases")
    assert result.exit_code == 2 and "reserved cases" in result.output
    assert _store_bytes(tiny_store) == before and not (tmp_path / "e.csv").exists()


def test_evaluate_out_named_json_is_refused_because_the_summary_would_replace_it(tiny_store, tmp_path):
    result = _evaluate(tmp_path, tiny_store, "--out", tmp_path / "scores.json")
    assert result.exit_code == 2 and "expected a .csv" in result.output


def test_evaluate_out_beside_the_store_is_written(tiny_store, tmp_path):
    result = _evaluate(tmp_path, tiny_store, "--out", tmp_path / "scores.csv", "--split", "all")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scores.csv").exists() and (tmp_path / "scores.json").exists()
