"""`ctprep convert --scheduler local:N`: a Dask LocalCluster of 2 worker processes writes the same store as the
local converter, and a worker killed mid-case has its case re-run elsewhere, leaving no half case behind."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_concurrent_writers import store_files, write_cases

from ctprep.convert import ConvertConfig, convert
from ctprep.crashpoint import CRASH_VARIABLE
from ctprep.errors import UsageError
from ctprep.executors import Scheduler, import_distributed
from ctprep.store import CASES, PARTIAL

pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install 'ctstack[distributed]')")

LOCAL = ConvertConfig(size=16, workers=1)
ON_DASK = ConvertConfig(size=16, scheduler="local:2")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """(raw folder of 4 cases, one unlabeled, one unreadable; the files of the local converter's store)."""
    tmp = tmp_path_factory.mktemp("local")
    raw = write_cases(tmp / "raw", range(4), unlabeled=(1,))
    (raw / "bad_ct.nii.gz").write_bytes(b"not a NIfTI file")
    report = convert(raw, tmp / "local.zarr", LOCAL, progress=False)
    assert len(report.failed) == 1
    return raw, store_files(tmp / "local.zarr")


def test_a_local_cluster_writes_the_same_store_and_fails_the_same_case(tmp_path, local_run):
    raw, expected = local_run
    report = convert(raw, tmp_path / "s.zarr", ON_DASK, progress=False)
    assert report.workers == 2 and sorted(report.converted) == ["p0", "p1", "p2", "p3"]
    assert len(report.failed) == 1 and report.failed[0].startswith(str(raw / "bad_ct.nii.gz"))
    assert store_files(tmp_path / "s.zarr") == expected  # arrays, case attributes, root metadata and index


def test_a_worker_killed_mid_case_is_replaced_and_its_case_completed(tmp_path, local_run, monkeypatch):
    raw, expected = local_run
    monkeypatch.setenv(CRASH_VARIABLE, f"p2:{tmp_path / 'crashed'}")  # the first writer of p2 dies half-way
    report = convert(raw, tmp_path / "s.zarr", ON_DASK, progress=False)
    assert (tmp_path / "crashed").exists() and "p2" in report.converted and len(report.failed) == 1
    assert store_files(tmp_path / "s.zarr") == expected
    assert sorted(p.name for p in (tmp_path / "s.zarr" / CASES).iterdir()) == ["p0", "p1", "p2", "p3", "zarr.json"]
    assert list((tmp_path / "s.zarr" / PARTIAL).iterdir()) == []


@pytest.mark.parametrize("text", ["local:0", "local", "http://host:8786", "host:8786"])
def test_a_bad_scheduler_is_a_one_line_usage_error(text):
    with pytest.raises(UsageError, match=r"^--scheduler .*expected local:N .* tcp://HOST:8786$"):
        Scheduler.parse(text)


def test_no_scheduler_answering_is_a_one_line_usage_error(tmp_path, local_run, monkeypatch):
    monkeypatch.setattr("ctprep.executors.CONNECT_TIMEOUT_S", 1)
    with pytest.raises(UsageError, match="no Dask scheduler answered .* `dask scheduler`"):
        convert(local_run[0], tmp_path / "s.zarr", ConvertConfig(size=16, scheduler="tcp://127.0.0.1:9"),
                progress=False)


def test_without_dask_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: the import raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'ctstack\[distributed\]'$"):
        import_distributed()
