"""ctsample plan --out and stats --csv/--plot never write over a store's own files (exit 2, one line)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import sample_app
from conftest import build_store, phantom, ras_affine

RESERVED = ["index.parquet", "zarr.json", "cases/zarr.json", "cases/case0/zarr.json", ".partial/plan.parquet"]


def _store_bytes(store: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _refused(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output  # the command line names a wrong path
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and all(text in lines[0] for text in expected), result.output


def run(*args):
    return CliRunner().invoke(sample_app, [str(a) for a in args])


@pytest.mark.parametrize("relative", RESERVED)
def test_plan_out_into_a_reserved_file_is_refused_and_the_store_is_unchanged(tiny_store, relative):
    before = _store_bytes(tiny_store)
    _refused(run("plan", tiny_store, "--out", tiny_store / relative), str(tiny_store), "reserved")
    assert _store_bytes(tiny_store) == before


def test_plan_default_and_plans_folder_stay_allowed(tiny_store):
    assert run("plan", tiny_store).exit_code == 0
    assert run("plan", tiny_store, "--out", tiny_store / "plans" / "mine.parquet").exit_code == 0
    assert len(list((tiny_store / "plans").glob("*.parquet"))) == 2


def test_plan_out_into_another_store_than_the_one_planned_is_refused(tiny_store, tmp_path):
    other = build_store(tmp_path / "other.zarr", {"x": (*phantom(), ras_affine())}, {"x": "train"})
    before = _store_bytes(other)
    _refused(run("plan", tiny_store, "--out", other / "index.parquet"), str(other.resolve()))
    assert _store_bytes(other) == before


def test_plan_out_that_is_a_folder_is_a_one_line_usage_error(tiny_store, tmp_path):
    _refused(run("plan", tiny_store, "--out", tmp_path), "found a folder")


@pytest.mark.parametrize("option", ["--csv", "--plot"])
def test_stats_outputs_into_reserved_files_are_refused_before_either_is_written(tiny_store, tmp_path, option):
    other = "--plot" if option == "--csv" else "--csv"
    before = _store_bytes(tiny_store)
    result = run("stats", tiny_store, option, tiny_store / "index.parquet", other, tmp_path / "fine.out")
    _refused(result, "reserved index.parquet")
    assert _store_bytes(tiny_store) == before and not (tmp_path / "fine.out").exists()


def test_stats_csv_is_written_beside_a_store(tiny_store, tmp_path):
    assert run("stats", tiny_store, "--csv", tmp_path / "stats.csv").exit_code == 0
    assert (tmp_path / "stats.csv").read_text().startswith("case_id,")
