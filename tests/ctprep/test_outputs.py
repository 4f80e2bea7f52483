"""ctprep.outputs: no command may write over a store's own files; the rest of a store (plans/) stays writable."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctprep.errors import UsageError
from ctprep.outputs import check_output, check_output_dir, is_store, reserved_in

RESERVED = ["zarr.json", "index.parquet", ".lock", "cases/zarr.json", "cases/case0/image/c/0/0/0",
            "cases/new.parquet", ".partial/x.parquet", "plans/zarr.json"]
NAMES = st.one_of(st.just("zarr.json"), st.just("index.parquet"),
                  st.text(alphabet="abcxyz_.-0", min_size=1, max_size=8).filter(lambda n: n not in (".", "..")))


def test_the_store_fixture_is_recognised_and_its_plain_folders_are_not(tiny_store):
    assert is_store(tiny_store)
    assert not is_store(tiny_store / "cases")  # a nested Zarr group, not a ctstack store root
    assert not is_store(tiny_store.parent)


@pytest.mark.parametrize("relative", RESERVED)
def test_every_reserved_file_is_refused_in_one_line(tiny_store, relative):
    with pytest.raises(UsageError) as err:
        check_output(tiny_store / relative)
    message = str(err.value)
    assert "\n" not in message and str(tiny_store) in message and "plans" in message


@pytest.mark.parametrize("relative", ["plans/train-r1.75.parquet", "stats.csv", "notes/zarr.csv"])
def test_plans_and_other_new_files_inside_a_store_stay_allowed(tiny_store, relative):
    assert check_output(tiny_store / relative) == tiny_store / relative


def test_the_store_folder_itself_is_no_file_but_may_hold_figures(tiny_store):
    with pytest.raises(UsageError, match="found a folder"):
        check_output(tiny_store)
    assert check_output_dir(tiny_store) == tiny_store
    with pytest.raises(UsageError, match="reserved cases"):
        check_output_dir(tiny_store / "cases" / "figs")


def test_a_link_into_a_store_is_judged_by_where_it_points(tiny_store, tmp_path):
    link = tmp_path / "elsewhere"
    os.symlink(tiny_store, link)
    with pytest.raises(UsageError, match="reserved index.parquet"):
        check_output(link / "index.parquet")
    file_link = tmp_path / "plan.parquet"
    os.symlink(tiny_store / "index.parquet", file_link)
    with pytest.raises(UsageError, match="reserved index.parquet"):
        check_output(file_link)


def test_a_store_nested_in_a_plain_folder_of_another_store_is_protected_too(tiny_store):
    from conftest import build_store, phantom, ras_affine

    inner = build_store(tiny_store / "plans" / "inner.zarr", {"a": (*phantom(), ras_affine())}, {"a": "train"})
    assert check_output(tiny_store / "plans" / "x.parquet")  # the outer store allows its plans/
    assert reserved_in(inner / "index.parquet") == (inner.resolve(), Path("index.parquet"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=st.sampled_from(["cases", ".partial", "plans", "figs"]), names=st.lists(NAMES, min_size=1, max_size=3))
def test_a_path_is_refused_exactly_when_the_format_owns_it(tiny_store, top, names):
    path = tiny_store.joinpath(top, *names)
    owned = top in ("cases", ".partial") or "zarr.json" in names  # index.parquet is the store's only at the root
    assert (reserved_in(path) is not None) == owned
