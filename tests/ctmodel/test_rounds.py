"""The rounds of docs/semi-supervised.md, as a user types them: train on the labeled patients, pseudo-label the
unlabeled ones, plan with --pseudo, train on that plan, and again with the new run as the labeler."""
from __future__ import annotations

import json

import pandas as pd
import torch
from typer.testing import CliRunner

from cli import model_app, sample_app
from conftest import build_store, phantom, ras_affine
from ctprep.index import read_index
from ctprep.store import SliceStore

torch.set_num_threads(1)
SMALL = ["--epochs", "1", "--width", "4", "--depth", "2", "--batch-size", "8", "--device", "cpu", "--no-augment"]


def run(app, *args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_two_rounds_of_pseudo_labels_chain_train_label_plan_train(tmp_path):
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    cases.update({f"unl{i}": (phantom(seed=20 + i)[0], None, ras_affine()) for i in range(3)})
    store = build_store(tmp_path / "store.zarr", cases, {**{c: "train" for c in cases}, "case2": "val"})
    unlabeled = ["unl0", "unl1", "unl2"]

    labeler = tmp_path / "round0"
    run(model_app, "train", str(store), *SMALL, "--out", str(labeler))
    for k in (1, 2):
        run(model_app, "pseudo-label", str(labeler), str(store), "--device", "cpu")
        records = {c: SliceStore.open(store).pseudo_record(c) for c in unlabeled}
        assert {r["run"] for r in records.values()} == {str(labeler.resolve())}
        plan = tmp_path / f"plan{k}.parquet"
        run(sample_app, "plan", str(store), "--pseudo", "--out", str(plan))
        rows = pd.read_parquet(plan)
        assert set(rows.loc[rows["role"] == "pseudo", "case_id"]) <= set(unlabeled)
        assert set(rows.loc[rows["role"] != "pseudo", "case_id"]) == {"case0", "case1"}
        nxt = tmp_path / f"round{k}"
        run(model_app, "train", str(store), "--plan", str(plan), *SMALL, "--out", str(nxt))
        config = json.loads((nxt / "config.json").read_text())
        assert config["plan"]["params"]["pseudo"] is True
        labeler = nxt
    index = read_index(store)
    assert index.loc[index["labeled"], "pseudo_confidence"].isna().all()  # labeled cases never pseudo-labelled
    assert index.loc[~index["labeled"], "pseudo_confidence"].notna().all()
