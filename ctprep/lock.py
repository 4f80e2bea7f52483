"""A per-store write lock on STORE/.lock (filelock: flock on POSIX, LockFileEx on Windows), released by the OS
even when the holder is killed."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ctprep.errors import StoreLockedError

LOCK_FILE = ".lock"


@contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold the store's exclusive write lock; raise StoreLockedError at once if another process has it.

    The lock file stays in place, empty, after release (on POSIX; Windows removes it), so runs do not change it.
    """
    store_path = Path(store_path)
    store_path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(store_path / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise StoreLockedError(
            f"{store_path}: another ctprep/ctsample process is writing this store; wait for it to finish"
        ) from err
    try:
        yield
    finally:
        lock.release()
