"""Pseudo-labels in the store (format 4): an unlabeled case gains, changes and loses its ``pseudo`` array
atomically, the index's pseudo columns follow the stored arrays, verify checks them, and a format-3 store is
refused in one line naming `ctprep upgrade`, which brings it up to date in place."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import zarr
from typer.testing import CliRunner

from cli import prep_app
from ctprep.errors import StoreFormatError
from ctprep.index import INDEX_FILE, PSEUDO_COLUMNS, read_index
from ctprep.pseudo import write_pseudo
from ctprep.store import FORMAT_VERSION, SliceStore
from ctprep.upgrade import upgrade_store
from ctprep.verify import verify
from tests.conftest import add_pseudo, build_store, one_line_error, phantom, ras_affine


@pytest.fixture
def store(tmp_path):
    """Two labeled train cases, one val case and two unlabeled train cases."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    cases.update({f"unl{i}": (phantom(seed=10 + i)[0], None, ras_affine()) for i in range(2)})
    splits = {"case0": "train", "case1": "train", "case2": "val", "unl0": "train", "unl1": "train"}
    return build_store(tmp_path / "store.zarr", cases, splits)


def file_digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def blob_mask(n_slices, size, lesion_slices):
    mask = np.zeros((n_slices, size, size), np.uint8)
    for z in lesion_slices:
        mask[z, 4:4 + z % 3 + 2, 5:9] = 1
    return mask


def test_a_pseudo_label_is_stored_and_the_index_columns_agree_with_it(store):
    before = SliceStore.open(store)
    n, size = before.read_image_raw("unl0").shape[:2]
    image_files = {k: v for k, v in file_digests(store / "cases" / "unl0").items() if k.parts[0] == "image"}
    mask = blob_mask(n, size, [2, 3, 5])
    confidence = list(np.linspace(0.6, 0.9, n).round(3))
    add_pseudo(store, "unl0", mask, confidence)

    opened = SliceStore.open(store)
    assert np.array_equal(opened.read_pseudo("unl0"), mask)
    assert opened.read_pseudo("unl1") is None and opened.read_mask("unl0") is None
    rows = read_index(store).set_index(["case_id", "slice"]).loc["unl0"]
    assert list(rows["pseudo_lesion_pixels"]) == list(mask.reshape(n, -1).sum(axis=1))
    assert list(rows["pseudo_has_lesion"]) == [z in (2, 3, 5) for z in range(n)]
    assert np.allclose(rows["pseudo_confidence"], confidence)
    others = read_index(store).query("case_id != 'unl0'")
    assert not others["pseudo_has_lesion"].any() and (others["pseudo_lesion_pixels"] == 0).all()
    assert others["pseudo_confidence"].isna().all()
    after = {k: v for k, v in file_digests(store / "cases" / "unl0").items() if k.parts[0] == "image"}
    assert after == image_files  # the image is carried over, not rewritten
    assert verify(store, progress=False).damaged == []


def test_a_second_pseudo_label_replaces_the_first_and_none_removes_it(store):
    opened = SliceStore.open(store)
    n, size = opened.read_image_raw("unl1").shape[:2]
    add_pseudo(store, "unl1", blob_mask(n, size, range(n)), run="runs/a")
    add_pseudo(store, "unl1", blob_mask(n, size, [1]), run="runs/b")
    assert SliceStore.open(store).pseudo_record("unl1")["run"] == "runs/b"
    assert read_index(store).query("case_id == 'unl1'")["pseudo_has_lesion"].sum() == 1

    write_pseudo(store, "unl1", None)
    assert SliceStore.open(store).read_pseudo("unl1") is None
    assert not (store / "cases" / "unl1" / "pseudo").exists()
    assert list((store / ".partial").iterdir()) == []  # nothing left half-written


def test_labeled_cases_and_inconsistent_records_are_refused(store):
    n, size = SliceStore.open(store).read_image_raw("case0").shape[:2]
    with pytest.raises(StoreFormatError, match="has a mask; pseudo-labels are for unlabeled cases only"):
        add_pseudo(store, "case0", blob_mask(n, size, [1]))
    record = {"lesion_pixels": [0] * n, "confidence": [1.0] * n}
    with pytest.raises(ValueError, match="lesion_pixels differ from the mask's"):
        write_pseudo(store, "unl0", blob_mask(n, size, [1]), record)
    assert SliceStore.open(store).read_pseudo("unl0") is None


def test_verify_finds_a_damaged_pseudo_label(store):
    opened = SliceStore.open(store)
    n, size = opened.read_image_raw("unl0").shape[:2]
    add_pseudo(store, "unl0", blob_mask(n, size, [2]))
    shard = next(p for p in (store / "cases" / "unl0" / "pseudo" / "c").rglob("*") if p.is_file())
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    faults = [d.reason for d in verify(store, progress=False).damaged]
    assert any("pseudo shard checksum differs" in f for f in faults), faults


def make_v3(store):
    """What a format-3 ctstack wrote: no pseudo columns, format_version 3."""
    index = pd.read_parquet(store / INDEX_FILE).drop(columns=list(PSEUDO_COLUMNS))
    index.to_parquet(store / INDEX_FILE, index=False)
    zarr.open_group(str(store), mode="r+").attrs["format_version"] = 3


def test_a_format_3_store_is_refused_in_one_line_and_upgraded_in_place(store):
    make_v3(store)
    for open_it in (SliceStore.open, read_index):
        with pytest.raises(StoreFormatError) as caught:
            open_it(store)
        assert str(caught.value).endswith(f"upgrade it in place with `ctprep upgrade {store}`")
        assert "\n" not in str(caught.value)
    cases_before = file_digests(store / "cases")

    result = CliRunner().invoke(prep_app, ["upgrade", str(store)])
    assert result.exit_code == 0 and f"format version 3 -> {FORMAT_VERSION}" in result.output
    index = read_index(store)
    assert not index["pseudo_has_lesion"].any() and index["pseudo_confidence"].isna().all()
    assert file_digests(store / "cases") == cases_before
    again = CliRunner().invoke(prep_app, ["upgrade", str(store)])
    assert again.exit_code == 0 and "already format version" in again.output


def test_only_the_previous_version_is_upgraded_in_place(store):
    zarr.open_group(str(store), mode="r+").attrs["format_version"] = 2
    with pytest.raises(StoreFormatError, match="cannot be upgraded in place"):
        upgrade_store(store)
    missing = CliRunner().invoke(prep_app, ["upgrade", str(store.parent / "nothing.zarr")])
    assert missing.exit_code != 0 and "nothing.zarr" in one_line_error(missing)


def test_a_failed_write_leaves_nothing_behind_and_no_shared_file(store):
    n, size = SliceStore.open(store).read_image_raw("unl0").shape[:2]
    add_pseudo(store, "unl0", blob_mask(n, size, [2]))
    before = file_digests(store / "cases" / "unl0")
    bad = {"lesion_pixels": [0] * n, "confidence": [1.0] * n}
    with pytest.raises(ValueError):
        write_pseudo(store, "unl0", blob_mask(n, size, [1, 2]), bad)
    assert list((store / ".partial").iterdir()) == []
    assert file_digests(store / "cases" / "unl0") == before
    assert all(p.stat().st_nlink == 1 for p in (store / "cases").rglob("*") if p.is_file())
