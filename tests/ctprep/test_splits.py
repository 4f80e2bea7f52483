"""Split assignment: labeled cases alone take val/test places, by a hash that adding cases never moves."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctprep.errors import UsageError
from ctprep.splits import SplitConfig, assign_splits, split_of
from conftest import sorted_with_unlabeled

case_ids = st.sets(st.text("abcdefghij0123456789_", min_size=1, max_size=12), max_size=40)
configs = st.builds(SplitConfig, test=st.floats(0.0, 0.9), val=st.floats(0.0, 0.9), seed=st.integers(0, 2**31))


@settings(max_examples=60, deadline=None)
@given(cases=case_ids, unlabeled_flags=st.lists(st.booleans(), min_size=40, max_size=40), added=case_ids,
       added_unlabeled=st.booleans(), cfg=configs)
def test_adding_cases_never_moves_an_existing_case(cases, unlabeled_flags, added, added_unlabeled, cfg):
    cases, unlabeled = sorted_with_unlabeled(cases, unlabeled_flags)
    before = assign_splits(cases, cfg, unlabeled)
    new = sorted(added - set(cases))
    after = assign_splits(cases + new, cfg, unlabeled | (set(new) if added_unlabeled else set()))
    assert {c: after[c] for c in cases} == before


@settings(max_examples=60, deadline=None)
@given(cases=case_ids, unlabeled_flags=st.lists(st.booleans(), min_size=40, max_size=40), cfg=configs)
def test_unlabeled_cases_go_to_train_and_labeled_ones_follow_their_hash(cases, unlabeled_flags, cfg):
    cases, unlabeled = sorted_with_unlabeled(cases, unlabeled_flags)
    splits = assign_splits(cases, cfg, unlabeled)
    assert set(splits) == set(cases)
    for case_id, split in splits.items():
        assert split == ("train" if case_id in unlabeled else split_of(case_id, cfg))


def test_unlabeled_cases_take_no_test_or_val_places():
    """An nnU-Net layout: 20 labeled imagesTr cases and 10 unlabeled imagesTs cases, half of each split held out."""
    cfg = SplitConfig(test=0.5, val=0.5)
    labeled = [f"tr_{i:03d}" for i in range(20)]
    unlabeled = [f"ts_{i:03d}" for i in range(10)]
    splits = assign_splits(labeled + unlabeled, cfg, unlabeled)
    assert {splits[c] for c in unlabeled} == {"train"}
    held_out = [c for c in splits if splits[c] != "train"]
    assert held_out == [c for c in labeled if split_of(c, cfg) != "train"]  # the labeled cases' own hash, unchanged
    assert {c for c in unlabeled if split_of(c, cfg) != "train"}, "the hash alone would have held some out"


def test_without_unlabeled_cases_the_hash_decides_alone():
    cfg = SplitConfig(test=0.3, val=0.2, seed=5)
    cases = [f"p{i}" for i in range(50)]
    assert assign_splits(cases, cfg) == {c: split_of(c, cfg) for c in cases}


def test_csv_overrides_the_hash_and_may_list_unlabeled_cases_as_train(tmp_path):
    csv = tmp_path / "splits.csv"
    csv.write_text("case_id,split\nlab0,test\nlab1,val\nnomask,train\n")
    splits = assign_splits(["lab0", "lab1", "lab2", "nomask"], SplitConfig(test=0.0, val=0.0, csv=csv), ["nomask"])
    assert splits == {"lab0": "test", "lab1": "val", "lab2": "train", "nomask": "train"}


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_csv_putting_an_unlabeled_case_in_val_or_test_is_refused_naming_it(tmp_path, held_out):
    csv = tmp_path / "splits.csv"
    csv.write_text(f"case_id,split\nlab0,test\nnomask,{held_out}\n")
    with pytest.raises(UsageError) as caught:
        assign_splits(["lab0", "nomask"], SplitConfig(csv=csv), unlabeled=["nomask"])
    message = str(caught.value)
    assert message.startswith(str(csv)) and f"nomask ({held_out})" in message and "train" in message
    assert "\n" not in message
