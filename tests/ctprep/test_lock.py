"""ctprep.lock: one writer per store, refused at once; the lock file never changes; no fcntl in our code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ctprep.errors import StoreLockedError
from ctprep.lock import LOCK_FILE, store_lock

ROOT = Path(__file__).resolve().parents[2]


def assert_refused(store: Path) -> None:
    """A second holder of ``store``'s lock is refused at once, in one line."""
    with pytest.raises(StoreLockedError, match="another ctprep/ctsample process is writing this store"):
        with store_lock(store):
            raise AssertionError("a second holder got the store lock")


def test_a_second_holder_is_refused_at_once_and_the_lock_is_free_again_after(tmp_path):
    with store_lock(tmp_path / "s.zarr"):
        assert_refused(tmp_path / "s.zarr")
    with store_lock(tmp_path / "s.zarr"):  # released on exit: a new holder gets it, and holds it
        assert_refused(tmp_path / "s.zarr")


def test_the_lock_file_stays_in_place_and_empty_across_holds(tmp_path):
    for _ in range(2):
        with store_lock(tmp_path):
            assert (tmp_path / LOCK_FILE).read_bytes() == b""
        assert (tmp_path / LOCK_FILE).read_bytes() == b""


def test_no_module_of_ours_imports_fcntl():
    sources = [ROOT / "cli.py", *(ROOT / "ctprep").glob("*.py"), *(ROOT / "ctsample").glob("*.py"),
               *(ROOT / "ctmodel").glob("*.py")]
    importers = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "fcntl" in names:
                importers.append(source.name)
    assert len(sources) > 30 and importers == []


WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on a platform without it: `import fcntl` raises ImportError
from pathlib import Path
import ctprep.convert, ctsample.resplit
from ctprep.errors import StoreLockedError
from ctprep.lock import store_lock
with store_lock(Path(sys.argv[1])):
    try:
        with store_lock(Path(sys.argv[1])):
            print("second holder let in")
    except StoreLockedError as err:
        print("refused:", err)
"""


def test_ctprep_imports_and_locks_where_fcntl_does_not_exist(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path / "s.zarr")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: ") and "another ctprep/ctsample process" in done.stdout
