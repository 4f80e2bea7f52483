"""Run folders: one `ctmodel train` at a time per folder (RUN/.lock), hints that fit `ctmodel train`, and
config.json + plan.parquet written whole."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from cli import model_app
from conftest import build_store, phantom, ras_affine
from conftest import one_line_error as one_line
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.runfolder import (CONFIG_FILE, PLAN_COLUMNS, PLAN_FILE, build_plan, plan_hash, read_config, read_run_plan,
                               write_config)
from ctmodel.train import train
from ctprep.errors import PlanError, RunError, RunLockedError, UsageError
from ctprep.lock import LOCK_FILE
from ctprep.store import SliceStore

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(width=4, depth=2)
FAST = TrainConfig(epochs=2, batch_size=8, lr=1e-2, augment=False, seed=0)
HOLD = """
import sys
from pathlib import Path
from ctmodel.runfolder import run_lock
with run_lock(Path(sys.argv[1]), resume=True):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


class Killed(Exception):
    """Stands in for SIGKILL during epoch 2."""


def killed_in_epoch_2(epoch: int, step: int) -> None:
    if epoch == 2:
        raise Killed


@pytest.fixture
def half_run(tiny_store, tmp_path) -> Path:
    """A run of two epochs killed in epoch 2: metrics.csv holds one row, last.pt epoch 1."""
    with pytest.raises(Killed):
        train(tiny_store, TINY, FAST, out=tmp_path / "run", on_step=killed_in_epoch_2)
    return tmp_path / "run"


def test_resume_while_another_process_trains_the_run_is_refused_and_writes_nothing(half_run, tiny_store):
    before = {name: (half_run / name).read_bytes() for name in ("metrics.csv", "last.pt", "best.pt")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(half_run)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["--resume"], []):  # resuming, or a new run pointed at the same folder
            result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--out", str(half_run), *args])
            assert result.exit_code == 1
            assert f"{half_run}: another `ctmodel train` is writing this run folder" in one_line(result)
        assert {name: (half_run / name).read_bytes() for name in before} == before  # no doubled metrics rows
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    resumed = train(tiny_store, out=half_run, resume=True)  # free again once the holder exits
    assert [row["epoch"] for row in resumed.rows] == [1, 2]


def test_the_lock_is_held_for_the_whole_run_and_released_after(tiny_store, tmp_path):
    from ctprep.lock import folder_lock

    def try_lock(epoch: int, step: int) -> None:
        with pytest.raises(RunLockedError):
            with folder_lock(tmp_path / "run", RunLockedError("busy")):
                raise AssertionError("a second holder got the run's lock while training")
        seen.append(epoch)

    seen: list[int] = []
    train(tiny_store, TINY, FAST, out=tmp_path / "run", on_step=try_lock)
    assert sorted(set(seen)) == [1, 2]
    with folder_lock(tmp_path / "run", RunLockedError("busy")):  # released at the end
        assert (tmp_path / "run" / LOCK_FILE).read_bytes() == b""


def test_a_refused_new_run_or_resume_leaves_no_folder_behind(tiny_store, tmp_path):
    with pytest.raises(RunError, match="no run folder"):
        train(tiny_store, TINY, FAST, out=tmp_path / "missing", resume=True)
    plan = tmp_path / "plan.parquet"
    plan.write_bytes(b"")
    with pytest.raises(UsageError, match="--plan FILE already fixed them"):
        train(tiny_store, TINY, FAST, out=tmp_path / "new", plan_path=plan, explicit=frozenset({"ratio"}))
    assert not (tmp_path / "missing").exists() and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- hints name options the command has


def train_options() -> set[str]:
    """Every --option of `ctmodel train`, as click sees it."""
    command = typer.main.get_command(model_app).commands["train"]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def options_outside_quotes(message: str) -> set[str]:
    """--options named in ``message`` outside `quoted commands` (those belong to the quoted command)."""
    return set(re.findall(r"--[a-z][a-z0-9-]*", re.sub(r"`[^`]*`", "", message)))


def test_train_on_a_store_without_labeled_train_patients_names_no_split_option(tmp_path):
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(2)}
    store = build_store(tmp_path / "store.zarr", cases, {"case0": "val", "case1": "test"})
    with pytest.raises(PlanError, match="expected labeled patients in the train split, found none"):
        train(store, TINY, replace(FAST, epochs=1), out=tmp_path / "run")
    result = CliRunner().invoke(model_app, ["train", str(store), "--out", str(tmp_path / "run")])
    line = one_line(result)
    assert result.exit_code == 1 and "ctsample split" in line
    assert "--split" not in line and options_outside_quotes(line) <= train_options()


def test_train_options_map_to_config_fields_and_only_typed_ones_are_explicit():
    from ctmodel.config import ModelConfig, TrainConfig, configs_from_options

    options = {"model": "unet2d", "width": 8, "epochs": 3, "lr": 1e-3, "store": "s.zarr", "resume": True}
    model, train, explicit = configs_from_options(options, given=["model", "epochs", "store"])
    assert model == ModelConfig(name="unet2d", width=8)
    assert train == TrainConfig(epochs=3, lr=1e-3)
    assert explicit == {"name", "epochs"}  # "store" sets no config field


# ---------------------------------------------------------------- config.json and plan.parquet are written whole


def start_run(store_path: Path, run_dir: Path) -> dict:
    """What a new run writes before its first epoch: config.json and plan.parquet (parameters count 0)."""
    store = SliceStore.open(store_path)
    index = store.index()
    return write_config(run_dir, TINY, FAST, store, index, build_plan(index, FAST, store.path), "test", 0)


def test_the_saved_plan_reads_back_as_the_rows_config_json_hashes(tiny_store, tmp_path):
    config = start_run(tiny_store, tmp_path / "run")
    saved = read_run_plan(tmp_path / "run")
    assert list(saved.columns) == list(PLAN_COLUMNS)
    assert len(saved) == config["plan"]["rows"] and plan_hash(saved) == config["plan"]["hash"]
    assert read_config(tmp_path / "run") == config
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([CONFIG_FILE, PLAN_FILE])


def test_a_plan_write_that_fails_half_way_leaves_no_plan_file(tiny_store, tmp_path, monkeypatch):
    def half_then_disk_full(frame, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a plan")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        start_run(tiny_store, tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []  # neither a torn plan.parquet nor a temp file
