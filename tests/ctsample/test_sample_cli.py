"""ctsample stats / split / plan as a user runs them on a store."""
from __future__ import annotations

import pandas as pd
import pytest
import zarr
from typer.testing import CliRunner

from cli import sample_app
from ctprep.index import read_index
from ctprep.lock import store_lock
from ctsample.plan import load_plan
from ctprep.splits import SplitConfig, split_of
from ctsample.stats import patient_stats

from conftest import build_store, phantom, ras_affine


@pytest.fixture()
def store(tmp_path):
    """Six phantom patients (a lesion in the middle slices of each) and one without a mask, all in train."""
    cases = {f"case{i}": (*phantom(shape=(24, 24, 16), seed=i), ras_affine()) for i in range(6)}
    image, _mask = phantom(shape=(24, 24, 16), seed=9)
    cases["nomask"] = (image, None, ras_affine())
    return build_store(tmp_path / "store.zarr", cases, {c: "train" for c in cases})


def run(*args: str):
    return CliRunner().invoke(sample_app, [str(a) for a in args])


def test_stats_per_patient_counts_add_up_to_the_index(store, tmp_path):
    index = read_index(store)
    stats = patient_stats(index)
    labeled = index[index["labeled"]]
    assert stats["lesion"].sum() == labeled["has_lesion"].sum()
    assert (stats["lesion"] + stats["empty"] == stats["slices"]).all()
    result = run("stats", store, "--plot", tmp_path / "s.png", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "empty : lesion overall" in result.output and "unlabeled patients" in result.output
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(tmp_path / "s.csv")) == 6


def test_split_reassigns_whole_patients_and_records_the_rule(store):
    result = run("split", store, "--test", "0.5", "--val", "0.2", "--seed", "3")
    assert result.exit_code == 0, result.output
    index = read_index(store)
    assert (index.groupby("case_id")["split"].nunique() == 1).all()  # never one patient in two splits
    assert set(index["split"]) > {"train"}
    assert zarr.open_group(str(store), mode="r").attrs["split_config"]["seed"] == 3
    again = run("split", store, "--test", "0.5", "--val", "0.2", "--seed", "3")
    assert again.exit_code == 0 and read_index(store).equals(index)  # deterministic


def test_split_csv_overrides_the_hash(store, tmp_path):
    (tmp_path / "s.csv").write_text("case_id,split\ncase0,test\ncase1,val\nghost,test\n")
    result = run("split", store, "--splits", tmp_path / "s.csv")
    assert result.exit_code == 0
    per_case = read_index(store).groupby("case_id")["split"].first()
    assert per_case["case0"] == "test" and per_case["case1"] == "val"
    assert "ghost" in result.output  # named as not in the store


def test_split_waits_for_no_one_while_another_process_writes(store):
    with store_lock(store):
        result = run("split", store)
    assert result.exit_code == 1 and "another" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plan_writes_a_loadable_file_and_prints_before_and_after(store, tmp_path):
    result = run("plan", store, "--ratio", "1.75", "--epochs", "2", "--out", tmp_path / "plan.parquet")
    assert result.exit_code == 0, result.output
    assert "ratio before" in result.output and "ratio after" in result.output
    plan = load_plan(tmp_path / "plan.parquet")
    assert sorted(plan.slices["epoch"].unique()) == [0, 1] and "nomask" not in set(plan.slices["case_id"])


def test_plan_defaults_to_a_file_inside_the_store(store):
    result = run("plan", store, "--ratio", "natural")
    assert result.exit_code == 0, result.output
    assert (store / "plans" / "train-rnatural-k1-e1-s0.parquet").exists()


@pytest.mark.parametrize("args, message", [(["--split", "val"], "no case"), (["--ratio", "many"], "natural"),
                                           (["--split", "dev"], "train, val, test")])
def test_plan_bad_input_is_one_line(store, args, message):
    result = run("plan", store, *args)
    assert result.exit_code in (1, 2) and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_missing_store_is_one_line_that_says_what_to_do(tmp_path):
    result = run("stats", tmp_path / "nope.zarr")
    assert result.exit_code == 2 and "ctprep convert" in result.output


def test_split_keeps_the_unlabeled_patient_in_train_and_counts_it(store):
    seed = next(s for s in range(100) if split_of("nomask", SplitConfig(test=0.5, val=0.5, seed=s)) != "train")
    result = run("split", store, "--test", "0.5", "--val", "0.5", "--seed", seed)
    assert result.exit_code == 0, result.output
    per_case = read_index(store).groupby("case_id")["split"].first()
    assert per_case["nomask"] == "train"  # although its hash says otherwise
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines()
            if (cells := line.replace("│", " ").split()) and cells[0] in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        labeled = int((per_case[per_case.index != "nomask"] == split).sum())
        unlabeled = int(split == "train")
        assert rows[split][1:4] == [str(labeled + unlabeled), str(labeled), str(unlabeled)]  # patients, labeled, unl.


def test_split_csv_listing_an_unlabeled_patient_as_test_exits_2_in_one_line(store, tmp_path):
    (tmp_path / "s.csv").write_text("case_id,split\ncase0,test\nnomask,test\n")
    before = read_index(store)
    result = run("split", store, "--splits", tmp_path / "s.csv")
    assert result.exit_code == 2  # a usage error, like any bad CSV
    assert "nomask (test)" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert read_index(store).equals(before)  # nothing rewritten


def test_plan_store_is_the_one_call_behind_ctsample_plan(store, tmp_path):
    from ctsample.plan import PlanConfig, default_plan_path, make_plan, plan_store

    cfg = PlanConfig(ratio=1.0, epochs=2)
    made, path = plan_store(store, cfg)
    assert path == default_plan_path(store, cfg) and path.exists()
    assert made.slices.equals(make_plan(read_index(store), cfg).slices)
    assert load_plan(path).slices.equals(made.slices)


def test_store_stats_writes_its_own_csv_and_counts_the_unlabeled(store, tmp_path):
    from ctsample.stats import store_stats

    result = store_stats(store, "train", 1, csv=tmp_path / "stats.csv")
    assert pd.read_csv(tmp_path / "stats.csv")["case_id"].tolist() == result.table["case_id"].tolist()
    assert result.unlabeled == 1  # "nomask"
    assert ("unlabeled patients", 1) in result.overall_rows()
    assert ("  of them pseudo-labelled (planned by --pseudo)", 0) in result.overall_rows()


def test_debug_given_after_any_command_keeps_the_traceback(tmp_path):
    result = run("stats", tmp_path / "missing.zarr", "--debug")
    assert result.exception is not None and type(result.exception).__name__ == "UsageError"


def test_help_names_arguments_and_flags_as_the_docs_do():
    text = run("plan", "--help").output
    assert "STORE" in text and "{store}" not in text and "<bool>" not in text


def test_split_folds_records_a_fold_per_labeled_non_test_patient_and_later_rebuilds_keep_the_rule(store):
    from ctprep.index import build_index
    from ctprep.splits import NO_FOLD, FoldConfig, fold_of
    from ctprep.store import SliceStore, root_attrs

    result = run("split", store, "--test", "0.3", "--val", "0.2", "--seed", "3", "--folds", "2")
    assert result.exit_code == 0, result.output
    assert "cross-validation folds" in result.output
    per_case = read_index(store).groupby("case_id")[["split", "labeled", "fold"]].first()
    for case_id, row in per_case.iterrows():
        expected = NO_FOLD if row.split == "test" or not row.labeled else fold_of(case_id, FoldConfig(2, seed=3))
        assert row.fold == expected
    assert root_attrs(store)["fold_config"]["folds"] == 2
    assert run("split", store, "--test", "0.3", "--val", "0.2", "--seed", "3").exit_code == 0  # keeps its 2 folds
    assert read_index(store).groupby("case_id")["fold"].first().equals(per_case["fold"])
    rebuilt = build_index(SliceStore.open(store), per_case["split"].to_dict())  # what `ctprep convert` rebuilds
    assert rebuilt.groupby("case_id")["fold"].first().equals(per_case["fold"])
    assert run("split", store, "--folds", "0").exit_code == 0
    assert (read_index(store)["fold"] == NO_FOLD).all()


def test_split_one_fold_fails_with_one_line(store):
    from conftest import one_line_error

    result = run("split", store, "--folds", "1")
    assert result.exit_code == 2 and "--folds 1" in one_line_error(result)  # 2: a usage error


def test_store_stats_counts_the_pseudo_labelled_unlabeled_patients(store):
    import numpy as np

    from conftest import add_pseudo
    from ctprep.store import SliceStore
    from ctsample.stats import store_stats

    n, side = SliceStore.open(store).read_image_raw("nomask").shape[:2]
    add_pseudo(store, "nomask", np.zeros((n, side, side), np.uint8))
    assert ("  of them pseudo-labelled (planned by --pseudo)", 1) in store_stats(store, "train", 1).overall_rows()
