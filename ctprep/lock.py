"""A per-store write lock (flock on STORE/.lock): released by the OS even when the holder is killed."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctprep.errors import StoreLockedError

LOCK_FILE = ".lock"


@contextmanager
def store_lock(store_path: Path) -> Iterator[None]:
    """Hold the store's exclusive write lock; raise StoreLockedError at once if another process has it."""
    store_path = Path(store_path)
    store_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(store_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise StoreLockedError(
                f"{store_path}: another ctprep/ctsample process is writing this store; wait for it to finish"
            ) from err
        yield
    finally:
        os.close(fd)
