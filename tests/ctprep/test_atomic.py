"""ctprep.atomic: a failed write never leaves a half-written file or a stray temp file; an unchanged one is not
rewritten; what is renamed into place was on disk before the rename, and the rename is on disk after it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctprep.atomic import remove_temp_files, replacing, write_bytes, write_text
from ctprep.store import CASES, PARTIAL, StoreLayout, create_or_open, write_case


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "summary.json", "old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_temp_file_keeps_the_suffix_so_writers_pick_the_format(tmp_path):
    with replacing(tmp_path / "sub" / "curves.png") as tmp:
        assert tmp.name.endswith(".png") and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "curves.png").read_bytes() == b"png"


def test_an_unchanged_write_leaves_the_file_its_inode_and_mtime_alone(tmp_path):
    target = write_text(tmp_path / "index.txt", "same")
    before = target.stat()
    write_text(target, "same")
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_ino != before.st_ino
    assert [p.name for p in tmp_path.iterdir()] == ["index.txt"]


@pytest.fixture
def disk_events(monkeypatch) -> list[tuple]:
    """Every fsync as ("fsync", inode) and every rename as ("replace", src, dst), in call order."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def synced_before_and_after(events: list[tuple], dst: Path) -> tuple[set[int], set[int]]:
    """Inodes fsynced before and after the rename onto ``dst``."""
    at = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == dst)
    return ({e[1] for e in events[:at] if e[0] == "fsync"}, {e[1] for e in events[at + 1:] if e[0] == "fsync"})


def test_the_content_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, disk_events):
    target = write_text(tmp_path / "index.parquet", "rows")
    before, after = synced_before_and_after(disk_events, target)
    assert target.stat().st_ino in before  # the temp file, now renamed: no renamed-but-empty file after power loss
    assert tmp_path.stat().st_ino in after  # the folder that records the new name


def test_a_case_folder_is_on_disk_file_by_file_before_it_is_renamed_into_cases(tmp_path, disk_events):
    store = create_or_open(tmp_path / "s.zarr", StoreLayout(size=8))
    mask = np.ones((3, 8, 8), np.uint8)  # non-zero data, so every array has its shard file (zeros write none)
    for attempt in (1, 2):  # a new case, then replacing it
        disk_events.clear()
        write_case(store.path, "p0", np.full((3, 8, 8), attempt, np.float16), mask, {"n_slices": 3})
        case = store.path / CASES / "p0"
        before, after = synced_before_and_after(disk_events, case)
        written = [case, *case.rglob("*")]
        assert {p.stat().st_ino for p in written} <= before and len(written) == 14  # group + 2 x (array, shard)
        assert (store.path / CASES).stat().st_ino in after
        assert store.read_image_raw("p0").max() == attempt
    assert not any((store.path / PARTIAL).iterdir())  # the replaced case was put aside there, then removed


def test_only_the_temp_files_of_killed_writes_are_removed(tmp_path):
    kept = [".lock", ".partial", "index.parquet", "zarr.json", ".hidden.zarr.json", "cases"]
    for name in kept:
        (tmp_path / name).write_text("")
    strays = [".0123abcd.index.parquet", ".deadbeef.zarr.json"]
    for name in strays:
        (tmp_path / name).write_text("half")
    assert remove_temp_files(tmp_path) == len(strays)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6))
def test_a_file_is_replaced_exactly_when_its_bytes_change(contents):
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "f.bin"
        write_bytes(target, contents[0])
        for old, new in zip(contents, contents[1:]):
            inode = target.stat().st_ino
            write_bytes(target, new)
            assert target.read_bytes() == new
            assert (target.stat().st_ino != inode) == (new != old)
        assert [p.name for p in Path(folder).iterdir()] == ["f.bin"]
