"""Re-running convert: unchanged cases are skipped, changed ones reconverted, killed runs leave no trace, and a
run that changes nothing leaves every file of the store byte-identical and untouched."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import phantom, ras_affine, save_nifti

from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreLockedError
from ctprep.index import read_index
from ctprep.lock import LOCK_FILE, store_lock
from ctprep.store import INDEX_FILE, SliceStore
from ctsample.resplit import resplit
from ctprep.splits import SplitConfig

CFG = ConvertConfig(size=16, workers=1)


def write_phantoms(raw: Path, seeds, shape=(23, 17, 9)) -> None:
    for seed in seeds:
        hu, lesion = phantom(shape=shape, seed=seed)
        save_nifti(raw / f"p{seed}_ct.nii.gz", hu, ras_affine(), dtype=np.int16, slope=1.0, inter=-1024.0)
        save_nifti(raw / f"p{seed}_seg.nii.gz", lesion.astype(np.uint8) * 255, ras_affine())


def assert_same_store(a: Path, b: Path) -> None:
    """Every array equal, and index.parquet equal byte for byte and as a DataFrame."""
    sa, sb = SliceStore.open(a), SliceStore.open(b)
    assert sa.case_ids() == sb.case_ids()
    for case_id in sa.case_ids():
        np.testing.assert_array_equal(sa.read_image_raw(case_id), sb.read_image_raw(case_id))
        np.testing.assert_array_equal(sa.read_mask(case_id), sb.read_mask(case_id))
        assert sa.case_attrs(case_id) == sb.case_attrs(case_id)
    pd.testing.assert_frame_equal(read_index(a), read_index(b))
    assert (a / INDEX_FILE).read_bytes() == (b / INDEX_FILE).read_bytes()


def test_second_run_skips_every_unchanged_case(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    first = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    second = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert sorted(first.converted) == ["p0", "p1", "p2"]
    assert second.converted == [] and sorted(second.skipped) == ["p0", "p1", "p2"]


def test_touching_one_source_reconverts_only_that_case(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    mask = tmp_path / "raw" / "p1_seg.nii.gz"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert report.converted == ["p1"] and sorted(report.skipped) == ["p0", "p2"]


def test_changed_source_replaces_the_stored_case(tmp_path):
    write_phantoms(tmp_path / "raw", range(2))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    hu, _ = phantom(seed=0)
    save_nifti(tmp_path / "raw" / "p0_seg.nii.gz", np.zeros(hu.shape, np.uint8), ras_affine())  # lesion removed
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert report.converted == ["p0"] and store.read_mask("p0").sum() == 0
    assert not store.index().query("case_id == 'p0'")["has_lesion"].any()
    assert not any((tmp_path / "s.zarr" / ".partial").iterdir())


def test_second_concurrent_convert_is_refused_with_a_clear_line(tmp_path):
    write_phantoms(tmp_path / "raw", [0])
    with store_lock(tmp_path / "s.zarr"):
        with pytest.raises(StoreLockedError, match="another ctprep/ctsample process is writing"):
            convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)


RUNNER = """
import sys
from pathlib import Path
from ctprep.convert import ConvertConfig, convert
print("ready", flush=True)
convert(Path(sys.argv[1]), Path(sys.argv[2]), ConvertConfig(size=64, workers=int(sys.argv[3])), progress=False)
"""


def start_convert(raw: Path, store: Path, workers: int = 1) -> subprocess.Popen:
    """A convert subprocess that has finished its imports (it printed 'ready')."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(raw), str(store), str(workers)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill_after(raw: Path, store: Path, seconds: float, workers: int = 1) -> bool:
    """Start a convert, SIGKILL it after ``seconds``; True if it was still running."""
    proc = start_convert(raw, store, workers)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, Path, float]:
    """(raw folder of 6 cases, a store converted without interruption, the seconds that took after imports)."""
    tmp = tmp_path_factory.mktemp("kill")
    write_phantoms(tmp / "raw", range(6), shape=(96, 96, 24))
    proc = start_convert(tmp / "raw", tmp / "clean.zarr")
    start = time.perf_counter()
    assert proc.wait(timeout=120) == 0
    return tmp / "raw", tmp / "clean.zarr", time.perf_counter() - start


@pytest.mark.slow
def test_run_killed_at_random_moments_then_rerun_equals_a_clean_run(tmp_path, clean_run):
    raw, clean, clean_seconds = clean_run
    rng = np.random.default_rng(0)
    killed = 0
    for attempt, fraction in enumerate(rng.uniform(0.05, 0.95, size=3)):  # fresh store, one kill each
        killed += kill_after(raw, tmp_path / f"killed{attempt}.zarr", fraction * clean_seconds)
    for fraction in rng.uniform(0.05, 0.5, size=2):  # the same store killed twice in a row
        killed += kill_after(raw, tmp_path / "twice.zarr", fraction * clean_seconds)
    assert killed >= 3  # most kills landed mid-run, not after it
    for store in [*(tmp_path / f"killed{i}.zarr" for i in range(3)), tmp_path / "twice.zarr"]:
        convert(raw, store, ConvertConfig(size=64, workers=1), progress=False)
        assert_same_store(store, clean)


@pytest.mark.slow
def test_killed_parallel_run_leaves_no_worker_holding_the_lock(tmp_path, clean_run):
    raw, clean, clean_seconds = clean_run
    assert kill_after(raw, tmp_path / "s.zarr", 0.5 * clean_seconds, workers=2)
    deadline = time.monotonic() + 10
    while True:  # orphaned workers notice their parent is gone within ~0.2 s and exit
        try:
            convert(raw, tmp_path / "s.zarr", ConvertConfig(size=64, workers=1), progress=False)
            break
        except StoreLockedError:
            assert time.monotonic() < deadline, "a worker of the killed run still holds the store lock"
            time.sleep(0.2)
    assert_same_store(tmp_path / "s.zarr", clean)


def snapshot(store: Path) -> dict[str, tuple]:
    """{relative path: (sha256, inode, mtime_ns)} of every file in the store; the lock file by its bytes alone
    (filelock versions that open it with O_TRUNC touch its mtime; docs/store-format.md)."""
    def entry(p: Path) -> tuple:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        return (digest,) if p.name == LOCK_FILE else (digest, p.stat().st_ino, p.stat().st_mtime_ns)

    return {str(p.relative_to(store)): entry(p) for p in sorted(store.rglob("*")) if p.is_file()}


def test_a_no_op_rerun_leaves_every_file_byte_identical_and_untouched(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    before = snapshot(tmp_path / "s.zarr")
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert sorted(report.skipped) == ["p0", "p1", "p2"] and report.seconds > 0  # the statistics are in the report
    assert {"zarr.json", ".lock", INDEX_FILE, "cases/p0/image/zarr.json"} <= set(before)
    assert snapshot(tmp_path / "s.zarr") == before


def test_a_rerun_after_a_failed_case_leaves_every_file_byte_identical(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    (tmp_path / "raw" / "p1_ct.nii.gz").write_bytes(b"not a NIfTI file")
    first = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    before = snapshot(tmp_path / "s.zarr")
    second = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert sorted(first.converted) == ["p0", "p2"] and len(first.failed) == len(second.failed) == 1
    assert snapshot(tmp_path / "s.zarr") == before


def test_the_store_holds_no_run_statistics(tmp_path):
    write_phantoms(tmp_path / "raw", [0])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    attrs = SliceStore.open(tmp_path / "s.zarr").attrs
    assert set(attrs) == {"format", "format_version", "tool_version", "window_hu", "size", "dtype", "split_config",
                          "consensus"}


def test_last_run_of_an_older_store_outlives_no_ops_and_goes_with_the_next_converted_case(tmp_path):
    write_phantoms(tmp_path / "raw", range(2))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs.update({"last_run": {"seconds": 1.5}})  # ctstack 0.1
    before = snapshot(tmp_path / "s.zarr")
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert snapshot(tmp_path / "s.zarr") == before
    write_phantoms(tmp_path / "raw", [2])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert "last_run" not in SliceStore.open(tmp_path / "s.zarr").attrs


def test_resplit_with_the_recorded_rule_leaves_the_store_untouched_and_a_new_rule_rewrites_it(tmp_path):
    write_phantoms(tmp_path / "raw", range(4))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    before = snapshot(tmp_path / "s.zarr")
    resplit(tmp_path / "s.zarr", SplitConfig())  # the default rule convert recorded
    assert snapshot(tmp_path / "s.zarr") == before
    resplit(tmp_path / "s.zarr", SplitConfig(seed=7))
    changed = {path for path, entry in snapshot(tmp_path / "s.zarr").items() if before[path] != entry}
    assert "zarr.json" in changed and SliceStore.open(tmp_path / "s.zarr").attrs["split_config"]["seed"] == 7
    assert changed <= {"zarr.json", INDEX_FILE}
