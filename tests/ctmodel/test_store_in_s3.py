"""Reading a store from object storage (s3://, a local S3 server): info, stats, plan, train (resident load) and
evaluate give what they give on the same store in a local folder."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import build_store, one_line_error, phantom, ras_affine, save_random_run
from typer.testing import CliRunner

from cli import model_app, prep_app, sample_app
from ctprep.info import store_info
from ctprep.store import StoreLayout
from ctsample.plan import PlanConfig, load_plan, plan_store

SPLITS = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test"}
runner = CliRunner()


@pytest.fixture
def s3_tiny(s3_store) -> str:
    """The tiny_store's five cases, written straight into a fresh bucket."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(5)}
    build_store(s3_store, cases, SPLITS)
    return s3_store


def test_info_of_a_store_in_s3_equals_the_local_one_but_for_the_path(s3_tiny, tiny_store):
    remote, local = store_info(s3_tiny), store_info(tiny_store)
    assert remote.rows()[:-1] == local.rows()[:-1] and remote.splits == local.splits
    assert remote.disk_bytes > 0
    result = runner.invoke(prep_app, ["info", s3_tiny])
    assert result.exit_code == 0, result.output
    assert s3_tiny in result.output


def test_plan_of_a_store_in_s3_is_saved_inside_it_or_where_out_says(s3_tiny, tiny_store, tmp_path):
    cfg = PlanConfig(epochs=2)
    expected, _ = plan_store(tiny_store, cfg, tmp_path / "local.parquet")
    result = runner.invoke(sample_app, ["plan", s3_tiny, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    saved = f"{s3_tiny}/plans/train-r1.75-k1-e2-s0.parquet"
    assert f"plan: {saved}" in result.output
    pd.testing.assert_frame_equal(load_plan(saved).slices, expected.slices)
    result = runner.invoke(sample_app, ["plan", s3_tiny, "--epochs", "2", "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(load_plan(tmp_path / "p.parquet").slices, expected.slices)
    assert runner.invoke(sample_app, ["stats", s3_tiny]).exit_code == 0


def test_train_on_a_plan_in_s3_and_evaluate_from_a_store_in_s3(s3_tiny, tmp_path):
    run, plan = tmp_path / "run", f"{s3_tiny}/plans/train-r1.75-k1-e1-s0.parquet"
    assert runner.invoke(sample_app, ["plan", s3_tiny]).exit_code == 0
    result = runner.invoke(model_app, ["train", s3_tiny, "--plan", plan, "--epochs", "1", "--width", "4",
                                       "--depth", "2", "--device", "cpu", "--batch-size", "4", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["store"]["path"] == s3_tiny and config["plan"]["source"] == plan
    result = runner.invoke(model_app, ["evaluate", str(run), s3_tiny, "--split", "all", "--device", "cpu",
                                       "--grid", "store", "--out", str(tmp_path / "eval.csv")])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "eval.csv")
    assert sorted(scores["case_id"]) == sorted(SPLITS)


def test_split_and_pseudo_label_need_a_local_store(s3_tiny, tmp_path):
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    for app, args in ((sample_app, ["split", s3_tiny]), (model_app, ["pseudo-label", str(run), s3_tiny])):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert one_line_error(result).endswith("needs a local store (expected a folder, found an object-storage "
                                               "URL); copy the store down, or use a local path")
