"""The store's format contract: layout attributes, per-slice chunks, atomic case writes, exact round trips."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from ctprep.errors import StoreFormatError, StoreNotFoundError
from ctprep.store import FORMAT_VERSION, SliceStore, StoreLayout, create_or_open, write_case


def test_tiny_store_has_format_attrs_and_one_chunk_per_slice(tiny_store):
    store = SliceStore.open(tiny_store)
    assert store.attrs["format_version"] == FORMAT_VERSION
    assert store.layout == StoreLayout(size=16)
    image = zarr.open_group(str(tiny_store / "cases" / "case0"), mode="r")["image"]
    assert image.chunks == (1, 16, 16)
    assert image.shards == (image.shape[0], 16, 16)


def test_index_lesion_pixels_agree_with_stored_mask(tiny_store):
    store = SliceStore.open(tiny_store)
    index = store.index()
    for case_id, rows in index.groupby("case_id"):
        mask = store.read_mask(case_id)
        np.testing.assert_array_equal(rows["lesion_pixels"].to_numpy(), mask.reshape(len(mask), -1).sum(1))
        np.testing.assert_array_equal(rows["has_lesion"].to_numpy(), mask.reshape(len(mask), -1).any(1))


def test_uint8_round_trip_is_exact(tmp_path):
    layout = StoreLayout(size=8, dtype="uint8")
    create_or_open(tmp_path / "s.zarr", layout)
    image = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    write_case(tmp_path / "s.zarr", "a", image, None, {"n_slices": 3})
    store = SliceStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.read_image_raw("a"), image)
    np.testing.assert_array_equal(store.read_image_raw("a", np.array([2, 0])), image[[2, 0]])
    assert store.read_mask("a") is None


def test_opening_with_other_layout_is_refused(tiny_store):
    with pytest.raises(StoreFormatError, match="store was made with"):
        create_or_open(tiny_store, StoreLayout(size=32))


def test_missing_store_says_how_to_create_one(tmp_path):
    with pytest.raises(StoreNotFoundError, match="ctprep convert"):
        SliceStore.open(tmp_path / "nope.zarr")
