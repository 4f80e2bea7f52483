"""Cross-validation folds: labeled non-test cases alone, by a hash that adding cases never moves."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctprep.errors import UsageError
from ctprep.index import case_rows, read_index, write_index
from ctprep.splits import NO_FOLD, FoldConfig, SplitConfig, assign_folds, assign_splits, fold_of, fold_view
from conftest import sorted_with_unlabeled

case_ids = st.sets(st.text("abcdefghij0123456789_", min_size=1, max_size=12), max_size=40)
fold_configs = st.builds(FoldConfig, folds=st.integers(2, 10), seed=st.integers(0, 2**31))


@settings(max_examples=60, deadline=None)
@given(cases=case_ids, added=case_ids, unlabeled_flags=st.lists(st.booleans(), min_size=40, max_size=40),
       cfg=fold_configs, test=st.floats(0.0, 0.9))
def test_adding_cases_never_moves_an_existing_case_between_folds(cases, added, unlabeled_flags, cfg, test):
    cases, unlabeled = sorted_with_unlabeled(cases, unlabeled_flags)
    split_cfg = SplitConfig(test=test, seed=cfg.seed)
    before = assign_folds(assign_splits(cases, split_cfg, unlabeled), cfg, unlabeled)
    grown = cases + sorted(added - set(cases))
    after = assign_folds(assign_splits(grown, split_cfg, unlabeled), cfg, unlabeled)
    assert {c: after[c] for c in cases} == before


@settings(max_examples=60, deadline=None)
@given(cases=case_ids, unlabeled_flags=st.lists(st.booleans(), min_size=40, max_size=40), cfg=fold_configs)
def test_only_labeled_non_test_cases_get_a_fold_and_it_is_their_hash(cases, unlabeled_flags, cfg):
    cases, unlabeled = sorted_with_unlabeled(cases, unlabeled_flags)
    splits = assign_splits(cases, SplitConfig(test=0.3, val=0.2, seed=cfg.seed), unlabeled)
    folds = assign_folds(splits, cfg, unlabeled)
    for case_id, fold in folds.items():
        held_out = splits[case_id] == "test" or case_id in unlabeled
        assert fold == (NO_FOLD if held_out else fold_of(case_id, cfg))
        assert held_out or 0 <= fold < cfg.folds


def test_folds_are_roughly_equal_on_many_cases():
    """A hash mod K: 1,000 cases in 5 folds give about 200 each (binomial sd ~ 12.6)."""
    folds = assign_folds({f"case{i:04d}": "train" for i in range(1000)}, FoldConfig(folds=5))
    sizes = pd.Series(folds).value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4] and sizes.between(150, 250).all()


def test_no_folds_gives_every_case_no_fold():
    assert assign_folds({"a": "train", "b": "val"}, FoldConfig()) == {"a": NO_FOLD, "b": NO_FOLD}


@pytest.mark.parametrize("folds", [-1, 1])
def test_one_fold_or_a_negative_count_is_refused(folds):
    with pytest.raises(UsageError, match="--folds"):
        FoldConfig(folds=folds)


def test_csv_fold_column_overrides_the_hash(tmp_path):
    csv = tmp_path / "splits.csv"
    csv.write_text("case_id,split,fold\na,train,2\nb,val,\nc,test\n")
    folds = assign_folds({"a": "train", "b": "val", "c": "test"}, FoldConfig(folds=3, csv=csv))
    assert folds == {"a": 2, "b": fold_of("b", FoldConfig(folds=3)), "c": NO_FOLD}


@pytest.mark.parametrize("line, message", [("a,train,3", "expected 0..2"), ("c,test,1", "test or unlabeled"),
                                           ("a,train,x", "integer fold")])
def test_bad_csv_folds_are_refused_naming_the_file(tmp_path, line, message):
    csv = tmp_path / "splits.csv"
    csv.write_text(f"{line}\n")
    with pytest.raises(UsageError, match=message):
        assign_folds({"a": "train", "c": "test"}, FoldConfig(folds=3, csv=csv))


def test_fold_config_round_trips_through_root_attributes(tmp_path):
    cfg = FoldConfig(folds=5, seed=7, csv=tmp_path / "s.csv")
    assert FoldConfig.from_attrs(cfg.to_attrs()) == cfg
    assert FoldConfig.from_attrs(None) == FoldConfig()


def _index(folds: dict[str, tuple[str, int]]) -> pd.DataFrame:
    return pd.concat([case_rows(c, 2, [1, 0], split, [1, 0], fold) for c, (split, fold) in folds.items()],
                     ignore_index=True)


def test_fold_view_makes_fold_k_val_and_the_other_folds_train():
    index = _index({"a": ("train", 0), "b": ("val", 1), "c": ("train", 1), "d": ("test", NO_FOLD)})
    view = fold_view(index, 1, "store.zarr").groupby("case_id")["split"].first().to_dict()
    assert view == {"a": "train", "b": "val", "c": "val", "d": "test"}
    view = fold_view(index, 0, "store.zarr").groupby("case_id")["split"].first().to_dict()
    assert view == {"a": "val", "b": "train", "c": "train", "d": "test"}


def test_fold_view_refuses_a_store_without_folds_or_a_missing_fold():
    with pytest.raises(UsageError, match="expected a store with folds"):
        fold_view(_index({"a": ("train", NO_FOLD)}), 0, "store.zarr")
    with pytest.raises(UsageError, match=r"expected a fold in 0\.\.1"):
        fold_view(_index({"a": ("train", 0), "b": ("train", 1)}), 2, "store.zarr")


def test_an_index_written_without_a_fold_column_reads_as_no_folds(tmp_path):
    """Stores converted earlier by this format version lack the column: every case reads as fold -1."""
    (tmp_path / "index.parquet").parent.mkdir(exist_ok=True)
    _index({"a": ("train", 0)}).drop(columns="fold").to_parquet(tmp_path / "index.parquet", index=False)
    assert read_index(tmp_path, check=False)["fold"].tolist() == [NO_FOLD, NO_FOLD]
    write_index(tmp_path, _index({"a": ("train", 1)}))
    assert read_index(tmp_path, check=False)["fold"].tolist() == [1, 1]
