"""Per-folder write locks on FOLDER/.lock (filelock: flock on POSIX, LockFileEx on Windows), released by the OS
even when the holder is killed: ``store_lock`` for stores, ``folder_lock`` for any folder (run folders)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ctprep.errors import CtstackError, StoreLockedError

LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: Path, busy: CtstackError) -> Iterator[None]:
    """Hold ``folder``'s exclusive lock (the folder must exist); raise ``busy`` at once if another holder has it.

    The lock file stays in place, empty, after release (on POSIX; Windows removes it), so runs do not change it.
    """
    lock = FileLock(Path(folder) / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise busy from err
    try:
        yield
    finally:
        lock.release()


@contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold the store's exclusive write lock; raise StoreLockedError at once if another process has it."""
    store_path = Path(store_path)
    store_path.mkdir(parents=True, exist_ok=True)
    busy = StoreLockedError(f"{store_path}: another ctprep/ctsample process is writing this store; wait for it to "
                            "finish")
    with folder_lock(store_path, busy):
        yield
