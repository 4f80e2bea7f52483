"""Damaged indexes, full disks and read-only stores end in one line naming the file and what to do (exit 1),
and a full disk loses nothing already written. Disks are real: a 1 MiB tmpfs and a read-only bind mount
(skipped where mounting is not permitted)."""
from __future__ import annotations

import errno
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import build_store, phantom, ras_affine, save_nifti
from typer.testing import CliRunner

from cli import prep_app, sample_app
from ctprep.errors import StorageError, StoreFormatError
from ctprep.index import read_index
from ctprep.store import INDEX_FILE, SliceStore

runner = CliRunner()


def one_error_line(result) -> str:
    """The error line, asserting there is exactly one and no traceback (a progress bar may share stderr)."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "\n" not in lines[0], result.output
    return lines[0]


@contextmanager
def mounted(where: Path, *args: str):
    """Mount (``mount *args where``) for the block, or skip the test where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", *args, str(where)], capture_output=True).returncode != 0:
        pytest.skip("mounting is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@contextmanager
def read_only_view(folder: Path, view: Path):
    """``folder`` seen read-only at ``view`` (a read-only bind mount: chmod does not stop root)."""
    with mounted(view, "--bind", str(folder)):
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True).returncode != 0:
            pytest.skip("remounting read-only is not permitted here")
        yield view


def small_store(path: Path) -> Path:
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    return build_store(path, cases, {"case0": "train", "case1": "train", "case2": "test"})


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_index_is_one_line_that_says_how_to_rebuild_it(tmp_path, damage):
    store = small_store(tmp_path / "s.zarr")
    index = store / INDEX_FILE
    good = index.read_bytes()
    index.write_bytes(np.random.default_rng(0).bytes(4096) if damage == "random bytes" else good[: len(good) // 2])
    with pytest.raises(StoreFormatError, match="not a readable index"):
        read_index(store)
    for command in (["plan", str(store)], ["stats", str(store)], ["split", str(store)]):
        result = runner.invoke(sample_app, command)
        assert result.exit_code == 1 and "rebuild it with `ctprep convert" in one_error_line(result)


def write_raw(raw: Path, seeds=(0, 1)) -> Path:
    for seed in seeds:
        hu, lesion = phantom(seed=seed)
        save_nifti(raw / f"c{seed}_ct.nii.gz", hu, ras_affine(), dtype=np.int16)
        save_nifti(raw / f"c{seed}_seg.nii.gz", lesion.astype(np.uint8), ras_affine())
    return raw


def fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until it is full; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_during_convert_is_one_line_and_keeps_the_store(tmp_path, workers):
    raw = write_raw(tmp_path / "raw")
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        store = disk / "s.zarr"
        args = ["convert", str(raw), str(store), "--size", "32", "--workers", str(workers)]
        assert runner.invoke(prep_app, args).exit_code == 0
        index_before, image_before = (store / INDEX_FILE).read_bytes(), SliceStore.open(store).read_image("c0")
        save_nifti(raw / "c0_ct.nii.gz", phantom(seed=7)[0], ras_affine(), dtype=np.int16)  # c0 must reconvert
        filler = fill(disk)
        result = runner.invoke(prep_app, args)
        line = one_error_line(result)
        assert result.exit_code == 1 and "found the disk full" in line and str(store) in line
        assert (store / INDEX_FILE).read_bytes() == index_before
        np.testing.assert_array_equal(SliceStore.open(store).read_image("c0"), image_before)
        filler.unlink()
        assert runner.invoke(prep_app, args).exit_code == 0  # room again: the re-run completes
        assert not list((store / ".partial").iterdir())


def test_read_only_store_is_one_line_for_convert_plan_and_split(tmp_path):
    store = small_store(tmp_path / "s.zarr")
    (store / ".lock").touch()  # as any convert leaves it
    raw = write_raw(tmp_path / "raw", seeds=[5])
    with read_only_view(store, tmp_path / "ro.zarr") as view:
        for app, command in ((prep_app, ["convert", str(raw), str(view), "--size", "16"]),
                             (sample_app, ["plan", str(view)]), (sample_app, ["split", str(view), "--seed", "3"])):
            result = runner.invoke(app, command)
            line = one_error_line(result)
            assert result.exit_code == 1 and "found a read-only one" in line and str(view) in line, command


def test_storage_error_is_a_ctstack_error_and_an_os_error():
    from ctprep.errors import CtstackError, storage_error

    mapped = storage_error(OSError(errno.ENOSPC, "No space left on device", "/data/s.zarr/index.parquet"))
    assert isinstance(mapped, StorageError) and isinstance(mapped, CtstackError) and isinstance(mapped, OSError)
    assert str(mapped).startswith("/data/s.zarr/index.parquet: cannot write (expected free space")
    assert storage_error(OSError(errno.EIO, "I/O error")) is None  # not user-fixable: stays a bug with traceback
