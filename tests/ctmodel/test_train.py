"""Training end to end on tiny stores: it learns, writes a complete run folder, resumes exactly, refuses bad input."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli import model_app
from conftest import build_store, one_line_error, phantom, ras_affine
from ctmodel.checkpoint import load_run
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.curves import METRIC_COLUMNS
from ctmodel.inference import predict_volume
from ctmodel.runfolder import check_plan
from ctmodel.train import train
from ctmodel.validate import overlap_scores
from ctprep.errors import PlanError, RunError
from ctprep.index import index_fingerprint
from ctprep.store import SliceStore, StoreLayout
from ctsample.plan import Plan, PlanConfig, make_plan, save_plan

torch.set_num_threads(1)
TINY = ModelConfig(width=4, depth=2)
FAST = TrainConfig(epochs=6, batch_size=8, lr=1e-2, augment=False, seed=0)


@pytest.fixture(scope="module")
def store64(tmp_path_factory) -> Path:
    """A 64x64 store of five phantom chests (3 train, 1 val, 1 test) with a lesion in the middle slices."""
    cases = {f"case{i}": (*phantom(shape=(40, 36, 12), seed=i), ras_affine()) for i in range(5)}
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test"}
    return build_store(tmp_path_factory.mktemp("s") / "store.zarr", cases, splits, StoreLayout(size=64))


@pytest.fixture(scope="module")
def tiny_run(store64, tmp_path_factory):
    """Six epochs on a plan built by ctsample (train builds it when given none)."""
    return train(store64, TINY, FAST, out=tmp_path_factory.mktemp("r") / "run")


def test_tiny_run_lowers_the_loss_and_beats_the_all_zero_predictor(tiny_run, store64):
    rows = tiny_run.rows
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    truth = torch.from_numpy(SliceStore.open(store64).read_mask("case3")).bool()
    trivial = float(overlap_scores(torch.zeros_like(truth), truth, (0, 1, 2))[0])
    assert tiny_run.summary["best_val_dice_3d"] > trivial + 0.5


def test_run_folder_holds_config_metrics_curves_checkpoints_and_summary(tiny_run, store64):
    run = tiny_run.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": "dual-encoder", "width": 4, "depth": 2, "context": 1, "block": "residual",
                               "fusion": "learned", "patch_depth": 32, "patch_size": 128, "heads": "consensus"}
    assert config["train"]["epochs"] == 6 and config["train"]["lr"] == 1e-2
    assert config["store"]["index_fingerprint"] == index_fingerprint(SliceStore.open(store64).index())
    assert config["store"]["layout"]["size"] == 64 and len(config["plan"]["hash"]) == 16
    assert {"torch", "numpy", "zarr", "ctstack"} <= set(config["versions"])
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == list(METRIC_COLUMNS) and metrics["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_dice_3d"] == pytest.approx(metrics["val_dice_3d"].max())
    assert summary["best_epoch"] == int(metrics.loc[metrics["val_dice_3d"].idxmax(), "epoch"])
    assert summary["parameters"] == config["parameters"] > 0


def test_best_checkpoint_reproduces_its_validation_dice(tiny_run, store64):
    loaded = load_run(tiny_run.run_dir, "best")
    store = SliceStore.open(store64)
    assert loaded.epoch == tiny_run.summary["best_epoch"] and loaded.layout == store.layout
    probs = predict_volume(loaded.model, torch.from_numpy(store.read_image("case3")), 32, "fp32")
    truth = torch.from_numpy(store.read_mask("case3")).bool()
    dice = float(overlap_scores(probs > 0.5, truth, (0, 1, 2))[0])
    assert dice == pytest.approx(tiny_run.summary["best_val_dice_3d"], abs=1e-6)


class Killed(Exception):
    """Stands in for SIGKILL in the middle of an epoch."""


def kill_at(epoch: int, step: int):
    def hook(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise Killed
    return hook


def test_resume_after_a_kill_mid_epoch_ends_like_an_uninterrupted_run(tiny_store, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=3e-3, augment=True, deterministic=True, seed=1)
    whole = train(tiny_store, TINY, cfg, out=tmp_path / "whole")
    with pytest.raises(Killed):
        train(tiny_store, TINY, cfg, out=tmp_path / "killed", on_step=kill_at(2, 3))
    resumed = train(tiny_store, ModelConfig(), TrainConfig(), out=tmp_path / "killed", resume=True)
    keys = ["epoch", "train_loss", "val_loss", "val_dice_3d", "val_dice_slice", "val_iou_slice", "lr"]
    expected = pd.read_csv(tmp_path / "whole" / "metrics.csv")[keys]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "killed" / "metrics.csv")[keys], expected)
    final_a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    final_b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert resumed.summary["best_val_dice_3d"] == whole.summary["best_val_dice_3d"]


def test_resume_refuses_an_option_that_conflicts_with_the_run(tiny_store, tmp_path):
    cfg = replace(FAST, epochs=1)
    train(tiny_store, TINY, cfg, out=tmp_path / "run")
    with pytest.raises(RunError, match="width=4, not 8"):
        train(tiny_store, ModelConfig(width=8), cfg, out=tmp_path / "run", resume=True, explicit=frozenset({"width"}))
    with pytest.raises(RunError, match="already holds a run"):
        train(tiny_store, TINY, cfg, out=tmp_path / "run")
    cli = CliRunner().invoke(model_app, ["train", str(tiny_store), "--out", str(tmp_path / "run"), "--resume",
                                         "--epochs", "3"])
    assert cli.exit_code == 1 and "epochs=1, not 3" in one_line_error(cli)


def test_plan_of_another_store_or_without_slices_is_refused(tiny_store):
    index = SliceStore.open(tiny_store).index()
    plan = make_plan(index, PlanConfig(epochs=2))
    slices, params = plan.slices, plan.params
    with pytest.raises(PlanError, match="another store"):
        check_plan(slices, {"index_fingerprint": "0123456789abcdef"}, index, tiny_store, "plan.parquet")
    with pytest.raises(PlanError, match="no training slices"):
        check_plan(slices.iloc[:0], params, index, tiny_store, "plan.parquet")
    val_plan = make_plan(index, PlanConfig(split="val"))
    with pytest.raises(PlanError, match="non-train cases"):
        check_plan(val_plan.slices, val_plan.params, index, tiny_store, "plan.parquet")


def test_cli_bad_input_is_one_line(tiny_store, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(model_app, ["train", str(tmp_path / "nothing.zarr"), "--device", "cpu"])
    assert missing.exit_code == 2 and "no ctstack store" in one_line_error(missing)
    zero = runner.invoke(model_app, ["train", str(tiny_store), "--batch-size", "0"])
    assert zero.exit_code == 2 and "--batch-size 0" in one_line_error(zero)
    meta = tiny_store / "zarr.json"
    meta.write_text(meta.read_text().replace('"format_version": 4', '"format_version": 5'))
    future = runner.invoke(model_app, ["train", str(tiny_store), "--device", "cpu"])
    assert future.exit_code == 1 and "format version 5" in one_line_error(future)


def test_cli_trains_and_lists_the_artifacts(tiny_store, tmp_path):
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--epochs", "1", "--width", "4",
                                            "--device", "cpu", "--no-augment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "metrics.csv", "curves.png", "best.pt", "last.pt", "summary.json"):
        assert f"{name}: {out / name}" in result.output and (out / name).exists()


def test_cli_trains_on_a_plan_file_from_ctsample_and_records_its_hash(tiny_store, tmp_path):
    plan_file = save_plan(make_plan(SliceStore.open(tiny_store).index(), PlanConfig(ratio=0.5, epochs=2)),
                          tmp_path / "plan.parquet")
    out = tmp_path / "planned"
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--plan", str(plan_file), "--epochs", "2",
                                            "--width", "4", "--device", "cpu", "--no-augment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert str(plan_file) in json.dumps(config)
    trained_on = pd.read_parquet(out / "plan.parquet")
    assert len(trained_on) == len(pd.read_parquet(plan_file))
    assert (config["train"]["ratio"], config["train"]["lesion_free"]) == (0.5, 0.1)  # the rule the file used
    for option in (["--ratio", "1"], ["--lesion-free", "0"], ["--neighbours", "2"]):
        conflict = CliRunner().invoke(model_app, ["train", str(tiny_store), "--plan", str(plan_file), *option,
                                                  "--out", str(tmp_path / "x")])
        assert conflict.exit_code == 2 and "--plan" in one_line_error(conflict)


@pytest.mark.parametrize("edit", ["negative slice", "NaN slice", "duplicate row"])
def test_cli_refuses_a_hand_edited_plan_in_one_line(tiny_store, tmp_path, edit):
    # A negative slice used to train silently: rows are case start + slice, so slice -1 of case1 took the centre
    # mask (and stack) of case0's last slice. NaN crashed with a traceback; a duplicated row was trained twice.
    plan = make_plan(SliceStore.open(tiny_store).index(), PlanConfig(ratio=0.5, epochs=2))
    edited = plan.slices.copy()
    row = int((edited["case_id"] == "case1").to_numpy().argmax())  # case0 comes right before it in memory
    if edit == "negative slice":
        edited.loc[row, "slice"] = -1
    elif edit == "NaN slice":
        edited = edited.astype({"slice": "float64"})
        edited.loc[row, "slice"] = float("nan")
    else:
        edited = pd.concat([edited, edited.iloc[[row]]], ignore_index=True)
    plan_file = save_plan(replace_rows(plan, edited), tmp_path / "edited.parquet")
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--plan", str(plan_file), "--epochs", "1",
                                            "--width", "4", "--device", "cpu", "--out", str(tmp_path / "run")])
    line = one_line_error(result)
    assert result.exit_code == 1 and f"{plan_file}: " in line and "ctsample plan" in line
    assert re.search(rf"\brows? {row}\b", line)  # names the offending row
    assert not (tmp_path / "run" / "config.json").exists()


def test_cli_missing_plan_file_is_a_command_line_error(tiny_store, tmp_path):
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--plan", str(tmp_path / "nope.parquet"),
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "nope.parquet: no such file" in one_line_error(result)


def replace_rows(plan, slices: pd.DataFrame):
    """``plan`` with other rows and the same parameters (what a hand edit of the file leaves)."""
    return Plan(slices=slices, params=plan.params, patients=plan.patients)


def test_resume_rechecks_the_plan_saved_in_the_run_folder(tiny_store, tmp_path):
    train(tiny_store, TINY, replace(FAST, epochs=1), out=tmp_path / "run")
    saved = pd.read_parquet(tmp_path / "run" / "plan.parquet")
    saved.loc[0, "slice"] = -1
    saved.to_parquet(tmp_path / "run" / "plan.parquet", index=False)
    with pytest.raises(PlanError, match=r"plan\.parquet: row 0 .*expected slice >= 0, found -1"):
        train(tiny_store, TINY, replace(FAST, epochs=2), out=tmp_path / "run", resume=True)


def test_resume_with_a_damaged_saved_plan_is_one_line_not_a_traceback(tiny_store, tmp_path):
    train(tiny_store, TINY, replace(FAST, epochs=1), out=tmp_path / "run")
    (tmp_path / "run" / "plan.parquet").write_bytes(b"PAR1 not really parquet")
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--resume",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "plan.parquet: damaged" in one_line_error(result)


def test_without_val_patients_best_follows_the_latest_epoch_and_says_so(tmp_path):
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    store = build_store(tmp_path / "store.zarr", cases, {c: "train" for c in cases})
    out = tmp_path / "run"
    result = CliRunner().invoke(model_app, ["train", str(store), "--epochs", "2", "--width", "4", "--depth", "2",
                                            "--device", "cpu", "--no-augment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no labeled val patient" in result.output
    assert load_run(out, "best").epoch == 2


def test_ratio_natural_trains_on_every_slice_and_resume_keeps_the_rule(tmp_path):
    # The study's regime: every slice of every train patient, a lesion-free one included, each epoch.
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(4)}
    cases["case2"] = (cases["case2"][0], cases["case2"][1] & False, ras_affine())  # lesion-free patient
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val"}
    store = build_store(tmp_path / "store.zarr", cases, splits)
    out = tmp_path / "natural"
    args = ["train", str(store), "--epochs", "2", "--width", "4", "--depth", "2", "--device", "cpu",
            "--no-augment", "--out", str(out)]
    result = CliRunner().invoke(model_app, [*args, "--ratio", "natural", "--batch-size", "1", "--accumulate", "4"])
    assert result.exit_code == 0, result.output
    index = SliceStore.open(store).index()
    train_slices = index[index["split"] == "train"]
    trained_on = pd.read_parquet(out / "plan.parquet")
    assert len(trained_on) == 2 * len(train_slices)  # both epochs hold every train slice
    assert set(trained_on.loc[trained_on["epoch"] == 0, "case_id"]) == {"case0", "case1", "case2"}
    config = json.loads((out / "config.json").read_text())
    assert (config["train"]["ratio"], config["train"]["accumulate"], config["train"]["batch_size"]) == (None, 4, 1)
    assert config["plan"]["params"]["ratio"] is None
    resumed = CliRunner().invoke(model_app, [*args, "--resume", "--ratio", "1.75"])
    assert resumed.exit_code == 1 and "ratio=None, not 1.75" in one_line_error(resumed)


def test_lesion_free_share_reaches_the_default_plan(tmp_path):
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    cases["case2"] = (cases["case2"][0], cases["case2"][1] & False, ras_affine())  # 9 slices, no lesion
    store = build_store(tmp_path / "store.zarr", cases, {"case0": "train", "case1": "val", "case2": "train"})
    planned = {}
    for share in (0.0, 1.0):
        run = train(store, TINY, replace(FAST, epochs=1, lesion_free=share), out=tmp_path / f"lf{share}")
        plan = pd.read_parquet(run.run_dir / "plan.parquet")
        planned[share] = int((plan["case_id"] == "case2").sum())
        assert json.loads((run.run_dir / "config.json").read_text())["train"]["lesion_free"] == share
    assert planned == {0.0: 0, 1.0: 9}


def test_bad_ratio_or_accumulate_is_one_line(tiny_store):
    runner = CliRunner()
    for option, text in ((["--ratio", "lots"], "--ratio 'lots'"), (["--ratio", "-1"], "--ratio -1"),
                         (["--accumulate", "0"], "--accumulate 0"),
                         (["--lesion-free", "2"], "--lesion-free 2")):
        result = runner.invoke(model_app, ["train", str(tiny_store), *option])
        assert result.exit_code == 2 and text in one_line_error(result)
