"""ctmodel compare: runs side by side, re-using an evaluation only while it matches the checkpoint."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from typer.testing import CliRunner

from cli import model_app
from ctmodel.checkpoint import atomic_save, checkpoint_payload
from ctmodel.compare import COLUMNS, compare
from ctmodel.config import ModelConfig
from ctmodel.evaluate import EvaluateConfig
from ctmodel.nets import build_model
from ctprep.store import StoreLayout


def _save_run(run_dir: Path, name: str = "dual-encoder", seed: int = 0) -> Path:
    """A run folder with a small random network, its config.json and a training summary.json."""
    torch.manual_seed(seed)
    model_cfg = ModelConfig(name=name, width=4, depth=2)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
    (run_dir / "summary.json").write_text(json.dumps({"parameters": 1234, "train_seconds": 120.0,
                                                       "peak_memory_mb": 512.0}))
    payload = checkpoint_payload(build_model(model_cfg), model_cfg, StoreLayout(size=16), epoch=1, state={})
    atomic_save(payload, run_dir / "best.pt")
    return run_dir


def test_rows_carry_metrics_and_training_figures_of_each_run(tmp_path, tiny_store):
    runs = [_save_run(tmp_path / "a"), _save_run(tmp_path / "b", name="unet2d", seed=1)]
    rows = compare(runs, tiny_store, EvaluateConfig(device="cpu"), progress=False)
    assert [r.model for r in rows] == ["dual-encoder", "unet2d"]
    row = dict(zip(COLUMNS, rows[1].row()))
    assert row["parameters"] == 1234 and row["training min"] == 2.0 and row["peak memory MB"] == 512.0
    assert row["Dice (3-D)"] == rows[1].summary["metrics"]["dice"]["mean"]
    assert all((run / "eval-test.csv").exists() for run in runs)


def test_saved_evaluation_is_reused_until_the_checkpoint_changes(tmp_path, tiny_store):
    run = _save_run(tmp_path / "a")
    cfg = EvaluateConfig(device="cpu")
    assert not compare([run], tiny_store, cfg, progress=False)[0].reused
    assert compare([run], tiny_store, cfg, progress=False)[0].reused
    assert not compare([run], tiny_store, EvaluateConfig(device="cpu", tolerance_mm=2.0), progress=False)[0].reused
    stat = (run / "best.pt").stat()
    os.utime(run / "best.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a retrained checkpoint
    assert not compare([run], tiny_store, EvaluateConfig(device="cpu", tolerance_mm=2.0), progress=False)[0].reused


def test_cli_compare_lists_every_run(tmp_path, tiny_store):
    runs = [_save_run(tmp_path / "first"), _save_run(tmp_path / "second", seed=3)]
    result = CliRunner().invoke(model_app, ["compare", *map(str, runs), str(tiny_store), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "first" in result.output and "second" in result.output


def test_cli_compare_without_runs_fails_with_one_line(tmp_path, tiny_store):
    result = CliRunner().invoke(model_app, ["compare", str(tiny_store)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no runs given" in result.output


def test_an_evaluation_on_another_grid_is_not_reused(tmp_path, tiny_store):
    run = _save_run(tmp_path / "a")
    store_grid = EvaluateConfig(device="cpu", grid="store")
    assert not compare([run], tiny_store, store_grid, progress=False)[0].reused
    assert compare([run], tiny_store, store_grid, progress=False)[0].reused
    native = compare([run], tiny_store, EvaluateConfig(device="cpu"), progress=False)[0]
    assert not native.reused
    assert dict(zip(COLUMNS, native.row()))["3-D grid"] == "store"  # tiny_store records no source files
