"""`ctmodel train --fold k`: fold k validates, the other folds train, the run records it and resume keeps it."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli import model_app
from conftest import one_line_error
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.train import train
from ctprep.errors import RunError
from ctprep.splits import SplitConfig
from ctsample.resplit import resplit

torch.set_num_threads(1)
TINY = ModelConfig(width=4, depth=2)
ONE_EPOCH = TrainConfig(epochs=1, batch_size=8, lr=1e-2, augment=False, seed=0, device="cpu")


@pytest.fixture
def folded_store(tiny_store, tmp_path):
    """tiny_store dealt into 2 folds by a CSV: fold 0 = case0, case2; fold 1 = case1, case3 (val); case4 test."""
    csv = tmp_path / "folds.csv"
    csv.write_text("case_id,split,fold\ncase0,train,0\ncase1,train,1\ncase2,train,0\ncase3,val,1\ncase4,test,\n")
    resplit(tiny_store, SplitConfig(csv=csv), folds=2)
    return tiny_store


def test_fold_k_is_validated_on_and_the_other_folds_trained_on(folded_store, tmp_path):
    run = train(folded_store, TINY, replace(ONE_EPOCH, fold=1), out=tmp_path / "fold1").run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["fold"] == 1
    assert config["val_cases"] == ["case1", "case3"]  # the store's val case joins its fold
    assert set(pd.read_parquet(run / "plan.parquet")["case_id"]) == {"case0", "case2"}


def test_resume_keeps_the_fold_and_refuses_another(folded_store, tmp_path):
    cfg = replace(ONE_EPOCH, fold=0)
    train(folded_store, TINY, cfg, out=tmp_path / "run")
    with pytest.raises(RunError, match="fold=0, not 1"):
        train(folded_store, TINY, replace(cfg, fold=1, epochs=2), out=tmp_path / "run", resume=True,
              explicit=frozenset({"fold"}))
    # resuming re-checks the saved plan against the fold's view of the index: it passes only with the fold applied
    resumed = train(folded_store, ModelConfig(), TrainConfig(device="cpu"), out=tmp_path / "run", resume=True)
    config = json.loads((resumed.run_dir / "config.json").read_text())
    assert config["train"]["fold"] == 0 and config["val_cases"] == ["case0", "case2"]


def test_cli_fold_on_a_store_without_folds_or_with_a_plan_is_one_line(tiny_store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(model_app, ["train", str(tiny_store), "--fold", "0", "--device", "cpu",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "expected a store with folds" in one_line_error(result)
    plan = tmp_path / "plan.parquet"
    plan.write_bytes(b"")
    result = runner.invoke(model_app, ["train", str(tiny_store), "--fold", "0", "--plan", str(plan),
                                       "--device", "cpu", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "drop --plan" in one_line_error(result)
    assert not (tmp_path / "r").exists()
