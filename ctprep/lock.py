"""Per-folder write locks on FOLDER/.lock (filelock: flock on POSIX, LockFileEx on Windows), released by the OS
even when the holder is killed: ``store_lock`` for stores, ``folder_lock`` for any folder (run folders).
A store in object storage is locked by a lease object instead (``ctprep.lease``)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ctprep.errors import CtstackError, StoreFormatError, StoreLockedError
from ctprep.location import StoreLocation, is_object, open_location

LOCK_FILE = ".lock"


@contextmanager
def folder_lock(folder: Path, busy: CtstackError, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``folder``'s exclusive lock (the folder must exist); raise ``busy`` if another holder keeps it for
    ``wait_s`` seconds (0: at once).

    The lock file stays in place, empty, after release (on POSIX; Windows removes it), so runs do not change it.
    A .lock that is a link or not a plain file raises StoreFormatError: ctstack never follows links it owns.
    """
    lock_path = Path(folder) / LOCK_FILE
    if lock_path.is_symlink() or (lock_path.exists() and not lock_path.is_file()):
        raise StoreFormatError(f"{lock_path}: expected a plain lock file, found a link or a folder; ctstack never "
                               "follows links inside its folders: remove it and run again")
    lock = FileLock(lock_path, timeout=wait_s)
    try:
        lock.acquire()
    except Timeout as err:
        raise busy from err
    try:
        yield
    finally:
        lock.release()


@contextmanager
def store_lock(store_path: StoreLocation | str, wait_s: float = 0.0,
               then: str = "wait for it to finish") -> Iterator[None]:
    """Hold the store's exclusive write lock; raise StoreLockedError if another process keeps it for ``wait_s``
    seconds (0: at once), its message ending with ``then`` (what to do).

    Writers of cases need no lock (``ctprep.store.write_case``); it guards the root metadata and the index.

    A store path that is a file (or a broken link) raises StoreFormatError. A store URL is locked by its lease
    (``ctprep.lease.object_lease``).
    """
    store_path = open_location(store_path)
    if is_object(store_path):
        from ctprep.lease import object_lease

        with object_lease(store_path, then, wait_s):
            yield
        return
    if store_path.exists() and not store_path.is_dir():
        raise StoreFormatError(f"{store_path}: not a store (expected a folder or a new path, found a file); "
                               "choose another path for the store")
    try:
        store_path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a link to nothing, or a file in the way further up
        raise StoreFormatError(f"{store_path}: cannot create the store folder (expected a folder or a new path, "
                               "found a file or a broken link in the way); choose another path") from err
    busy = StoreLockedError(f"{store_path}: another ctprep/ctsample process is writing this store; {then}")
    with folder_lock(store_path, busy, wait_s):
        yield
