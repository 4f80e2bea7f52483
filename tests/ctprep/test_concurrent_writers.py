"""Several writers, one store: --shard jobs plus `ctprep index` equal a single run, a run never clears another live
run's partial area, a writer killed mid-case leaves no half case, and `ctprep index` rebuilds the index exactly."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import phantom, ras_affine, save_nifti
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.crashpoint import CRASH_EXIT_CODE, CRASH_VARIABLE
from ctprep.errors import UsageError
from ctprep.index import INDEX_FILE
from ctprep.partials import OWNER_FILE
from ctprep.shard_jobs import Shard
from ctprep.store import CASES, PARTIAL

CFG = ConvertConfig(size=16, workers=1)
ROOT = Path(__file__).resolve().parents[2]


def write_cases(raw: Path, seeds, unlabeled=()) -> Path:
    """Tiny phantom cases p<seed> (those in ``unlabeled`` without a mask)."""
    for seed in seeds:
        hu, lesion = phantom(seed=seed)
        save_nifti(raw / f"p{seed}_ct.nii.gz", hu, ras_affine(), dtype=np.int16, slope=1.0, inter=-1024.0)
        if seed not in unlabeled:
            save_nifti(raw / f"p{seed}_seg.nii.gz", lesion.astype(np.uint8) * 255, ras_affine())
    return raw


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of the dataset (not .lock, not .partial/) by its path relative to the store."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != ".lock" and PARTIAL not in p.relative_to(store).parts}


def reference_store(tmp: Path, seeds, unlabeled=()) -> tuple[Path, dict[str, bytes]]:
    """(raw folder of ``write_cases``; the files of the store one plain local convert makes of it): what other
    ways of converting are compared with."""
    raw = write_cases(tmp / "raw", seeds, unlabeled)
    convert(raw, tmp / "reference.zarr", CFG, progress=False)
    return raw, store_files(tmp / "reference.zarr")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """(raw folder of 5 cases, one unlabeled; the files of a store converted by one plain run)."""
    return reference_store(tmp_path_factory.mktemp("single"), range(5), unlabeled=(3,))


def test_shards_in_any_order_then_ctprep_index_equal_a_single_run(tmp_path, single_run):
    raw, expected = single_run
    second = convert(raw, tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, shard="2/2"), progress=False)
    assert not (tmp_path / "s.zarr" / INDEX_FILE).exists()  # a shard job leaves the index to `ctprep index`
    first = convert(raw, tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, shard="1/2"), progress=False)
    assert sorted(first.converted + second.converted) == ["p0", "p1", "p2", "p3", "p4"]
    result = CliRunner().invoke(prep_app, ["index", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert store_files(tmp_path / "s.zarr") == expected


def test_every_case_goes_to_exactly_one_share_of_nearly_equal_size():
    ids = [f"c{i:03d}" for i in range(23)]
    shares = [Shard(i, 4).select(ids, case_id=str) for i in range(1, 5)]
    assert sorted(sum(shares, [])) == ids and {len(share) for share in shares} == {5, 6}


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "2", "a/b"])
def test_a_bad_shard_is_a_one_line_usage_error(text):
    with pytest.raises(UsageError, match=r"^--shard .*expected i/N with 1 <= i <= N"):
        Shard.parse(text)


def test_ctprep_index_rebuilds_a_lost_index_byte_for_byte(tmp_path, single_run):
    raw, expected = single_run
    convert(raw, tmp_path / "s.zarr", CFG, progress=False)
    (tmp_path / "s.zarr" / INDEX_FILE).unlink()  # as after a client that died before writing it
    assert CliRunner().invoke(prep_app, ["index", str(tmp_path / "s.zarr")]).exit_code == 0
    assert store_files(tmp_path / "s.zarr") == expected


def run_area(store: Path, name: str, host: str, pid: int, age_s: float = 0.0) -> Path:
    """A partial area as another run would leave it: owner.json and a half-written case."""
    area = store / PARTIAL / f"run-{name}-{pid}-0123abcd"
    (area / "p9-00000000" / "image").mkdir(parents=True)
    (area / OWNER_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_s}))
    return area


def dead_pid() -> int:
    """The id of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_run_keeps_live_partial_areas_and_clears_dead_or_stale_ones(tmp_path):
    raw = write_cases(tmp_path / "raw", [0])
    store = tmp_path / "s.zarr"
    convert(raw, store, CFG, progress=False)
    here = socket.gethostname()
    live = run_area(store, "live", here, os.getpid())  # a writer of this host still running
    elsewhere = run_area(store, "other", "another-host", 1)  # can't be checked from here: kept until stale
    dead = run_area(store, "dead", here, dead_pid())
    stale = run_area(store, "stale", "another-host", 1, age_s=25 * 3600)
    convert(raw, store, CFG, progress=False)
    assert live.is_dir() and elsewhere.is_dir() and not dead.exists() and not stale.exists()
    convert(raw, store, ConvertConfig(size=16, workers=1, stale_after_s=60.0), progress=False)
    assert live.is_dir() and elsewhere.is_dir()  # fresh: a minute has not passed


RUNNER = """
import sys
from pathlib import Path
from ctprep.convert import ConvertConfig, convert
convert(Path(sys.argv[1]), Path(sys.argv[2]), ConvertConfig(size=16, workers=1), progress=False)
"""


def test_a_convert_killed_mid_case_leaves_no_half_case_and_the_next_run_completes_it(tmp_path, single_run):
    raw, expected = single_run
    env = {**os.environ, CRASH_VARIABLE: f"p2:{tmp_path / 'crashed'}"}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(raw), str(tmp_path / "s.zarr")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == CRASH_EXIT_CODE, done.stderr  # killed with p2's arrays written, its zarr.json not
    assert not (tmp_path / "s.zarr" / CASES / "p2").exists()
    assert [p.name for p in (tmp_path / "s.zarr" / PARTIAL).iterdir()][0].startswith("run-")  # the dead run's
    report = convert(raw, tmp_path / "s.zarr", CFG, progress=False)
    assert "p2" in report.converted and not report.failed
    assert store_files(tmp_path / "s.zarr") == expected
    assert list((tmp_path / "s.zarr" / PARTIAL).iterdir()) == []
