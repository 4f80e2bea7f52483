"""The split rule's one owner: options, root attribute and per-split counts round-trip through ctprep.splits."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from ctprep.errors import UsageError
from ctprep.index import case_rows
from ctprep.splits import SPLIT_CHOICES, SPLITS, SplitConfig, check_split_choice, split_counts

fractions = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


@given(test=fractions, val=fractions, seed=st.integers(0, 2**31), csv=st.sampled_from([None, "lists/official.csv"]))
def test_the_root_attribute_reads_back_as_the_same_rule(test, val, seed, csv):
    cfg = SplitConfig(test=test, val=val, seed=seed, csv=None if csv is None else Path(csv).absolute())
    assert SplitConfig.from_attrs(cfg.to_attrs()) == cfg


def test_a_store_without_a_recorded_rule_reads_as_the_default_rule():
    assert SplitConfig.from_attrs(None) == SplitConfig.from_attrs({}) == SplitConfig()


def test_no_split_option_keeps_the_stores_rule_and_any_one_option_fills_the_defaults(tmp_path):
    assert SplitConfig.from_options() is None
    assert SplitConfig.from_options(seed=3) == SplitConfig(test=0.2, val=0.1, seed=3)
    assert SplitConfig.from_options(test=0.0) == SplitConfig(test=0.0, val=SplitConfig().val, seed=SplitConfig().seed)
    assert SplitConfig.from_options(csv=tmp_path / "s.csv").csv == tmp_path / "s.csv"


def test_split_choices_are_the_split_names_and_all():
    assert SPLIT_CHOICES == (*SPLITS, "all")
    for name in SPLIT_CHOICES:
        check_split_choice(name)
    with pytest.raises(UsageError, match="--split holdout: expected one of train, val, test, all"):
        check_split_choice("holdout")


def test_split_counts_per_patient_in_display_order_with_unknown_names_last():
    index = pd.concat([case_rows("a", 4, [0, 5, 0, 0], "val"), case_rows("b", 3, None, "train"),
                       case_rows("c", 2, [1, 1], "train"), case_rows("d", 1, [0], "extra")], ignore_index=True)
    counts = split_counts(index)
    assert list(counts.index) == ["train", "val", "extra"]  # no test case: no test row
    expected_train = {"patients": 2, "labeled": 1, "unlabeled": 1, "slices": 3 + 2, "lesion": 2}
    assert counts.loc["train"].to_dict() == expected_train
    assert counts.loc["val"].to_dict() == {"patients": 1, "labeled": 1, "unlabeled": 0, "slices": 4, "lesion": 1}
