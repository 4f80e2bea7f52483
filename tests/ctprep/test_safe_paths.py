"""A store never acts through links: the leftover sweep stays inside the store; reserved paths that are links,
and store paths that are files, are refused with one line (exit 1)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, phantom, ras_affine, save_nifti
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreFormatError
from ctprep.lock import store_lock
from ctprep.partials import clear_partial
from ctprep.store import PARTIAL, RESERVED, StoreLayout, create_or_open

runner = CliRunner()


def write_raw(raw: Path) -> Path:
    hu, lesion = phantom()
    save_nifti(raw / "a_ct.nii.gz", hu, ras_affine(), dtype=np.int16)
    save_nifti(raw / "a_seg.nii.gz", lesion.astype(np.uint8), ras_affine())
    return raw


def victim(tmp_path: Path) -> Path:
    """A folder outside the store holding a sub-folder and a file the sweep must not touch."""
    outside = tmp_path / "precious"
    (outside / "results").mkdir(parents=True)
    (outside / "results" / "scores.csv").write_text("case,dice\n")
    return outside


def test_a_partial_that_is_a_link_is_refused_and_what_it_points_to_survives(tmp_path):
    outside = victim(tmp_path)
    store = tmp_path / "s.zarr"
    convert(write_raw(tmp_path / "raw"), store, ConvertConfig(size=16, workers=1), progress=False)
    if (store / PARTIAL).exists():
        (store / PARTIAL).rmdir()  # empty after a clean run
    (store / PARTIAL).symlink_to(outside, target_is_directory=True)
    result = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(store), "--size", "16"])
    assert result.exit_code == 1 and "symbolic link" in one_line_error(result, "stderr")
    assert (outside / "results" / "scores.csv").read_text() == "case,dice\n"


def test_clear_partial_removes_a_link_inside_partial_but_not_its_target(tmp_path):
    outside = victim(tmp_path)
    (tmp_path / PARTIAL).mkdir()
    (tmp_path / PARTIAL / "case-1234abcd").symlink_to(outside / "results", target_is_directory=True)
    (tmp_path / PARTIAL / "old-case-00000000").mkdir()
    assert clear_partial(tmp_path) == 2
    assert list((tmp_path / PARTIAL).iterdir()) == []
    assert (outside / "results" / "scores.csv").exists()


@pytest.mark.parametrize("name", RESERVED)
def test_a_store_whose_reserved_path_is_a_link_is_refused(tmp_path, name):
    outside = victim(tmp_path)
    store = tmp_path / "s.zarr"
    create_or_open(store, StoreLayout(size=16))
    target = tmp_path / f"elsewhere-{name}"
    target.mkdir()
    reserved = store / name
    if reserved.is_dir():
        reserved.rename(tmp_path / f"moved-{name}")
    else:
        reserved.unlink(missing_ok=True)
    reserved.symlink_to(target if name in ("cases", PARTIAL) else outside / "results" / "scores.csv")
    with pytest.raises(StoreFormatError, match="symbolic link|link or a folder"):
        with store_lock(store):
            create_or_open(store, StoreLayout(size=16))
            clear_partial(store)
    assert (outside / "results" / "scores.csv").read_text() == "case,dice\n"


def test_converting_into_a_regular_file_is_one_line_exit_1(tmp_path):
    target = tmp_path / "store.zarr"
    target.write_text("not a store")
    result = runner.invoke(prep_app, ["convert", str(write_raw(tmp_path / "raw")), str(target), "--size", "16"])
    assert result.exit_code == 1 and "expected a folder or a new path, found a file" in one_line_error(result, "stderr")
    assert target.read_text() == "not a store"


def test_create_or_open_refuses_a_regular_file(tmp_path):
    (tmp_path / "s.zarr").write_text("x")
    with pytest.raises(StoreFormatError, match="found a file"):
        create_or_open(tmp_path / "s.zarr", StoreLayout(size=16))


def test_skipped_entries_are_warnings_and_convert_still_succeeds(tmp_path):
    raw = write_raw(tmp_path / "raw")
    os.mkfifo(raw / "b_ct.nii.gz")
    result = runner.invoke(prep_app, ["convert", str(raw), str(tmp_path / "s.zarr"), "--size", "16",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"warning: {raw / 'b_ct.nii.gz'}: skipped, a FIFO (named pipe), not a file" in result.stderr
