"""Partial areas of a store: where writers build cases before committing them, one area per run.

Several writers may fill one store at once (Dask workers, SLURM array tasks, several machines on a shared
filesystem), so a run never clears another live run's work: each run builds its cases under its own
``.partial/run-<host>-<pid>-<hex>/`` with an ``owner.json`` (host, pid, start time), and a starting run clears
only areas that are stale (older than ``stale_after_s``) or owned by a process of this host that no longer exists.
Any other entry of ``.partial/`` (written by a lock holder: ``ctprep verify --repair``, pseudo-labels, ctstack
before run areas) is cleared only by a caller that holds the store lock. Stores in object storage have no partial
areas: cases are written in place, their zarr.json last (``ctprep.store.write_case_in_place``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ctprep.location import is_object, open_location
from ctprep.store import PARTIAL, refuse_links

OWNER_FILE = "owner.json"
STALE_AFTER_S = 24 * 3600.0  # a run area this old is a killed run's (no case takes a day to convert)
RUN_AREA = re.compile(r"run-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}")


@dataclass(frozen=True)
class Owner:
    """Who made a run area: the host name, the process id there and the start time (Unix seconds)."""

    host: str
    pid: int
    started: float


@contextmanager
def run_area(store_path: Path) -> Iterator[Path | None]:
    """A fresh partial area for one run of this process, removed with what is left in it when the run ends
    (None for a store in object storage, which needs none)."""
    if is_object(open_location(store_path)):
        yield None
        return
    area = new_run_area(store_path)
    try:
        yield area
    finally:
        shutil.rmtree(area, ignore_errors=True)


def new_run_area(store_path: Path) -> Path:
    """Create ``.partial/run-<host>-<pid>-<hex>/`` with its owner.json; returns the area's path."""
    refuse_links(store_path, (PARTIAL,))
    owner = Owner(host=_host(), pid=os.getpid(), started=time.time())
    area = Path(store_path) / PARTIAL / f"run-{owner.host}-{owner.pid}-{uuid.uuid4().hex[:8]}"
    area.mkdir(parents=True)
    try:
        (area / OWNER_FILE).write_text(json.dumps(asdict(owner)))
    except BaseException:  # e.g. a full disk: leave no area without an owner (it would wait out the stale age)
        shutil.rmtree(area, ignore_errors=True)
        raise
    return area


def clear_partial(path: Path, stale_after_s: float = STALE_AFTER_S, locked: bool = True, runs: bool = True) -> int:
    """Remove leftovers of interrupted writes; returns how many entries of ``.partial/`` were removed.

    With ``runs``, run areas go when abandoned (``is_abandoned``); any other entry only when ``locked`` (the caller
    holds the store lock, so no lock holder is writing it). Never follows a link: a ``.partial`` that is a link is
    refused (StoreFormatError), and a link inside it is removed itself, not what it points to. A store in object
    storage has no ``.partial/``: 0.
    """
    if is_object(open_location(path)):
        return 0
    partial = Path(path) / PARTIAL
    refuse_links(path, (PARTIAL,))
    if not partial.is_dir():
        return 0
    now = time.time()
    leftovers = [item for item in partial.iterdir()
                 if (runs and is_abandoned(item, now, stale_after_s) if is_run_area(item) else locked)]
    for item in leftovers:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return len(leftovers)


def is_run_area(item: Path) -> bool:
    """Whether a ``.partial/`` entry is a run's area (a real folder named like one)."""
    return item.is_dir() and not item.is_symlink() and RUN_AREA.fullmatch(item.name) is not None


def is_abandoned(area: Path, now: float, stale_after_s: float) -> bool:
    """Whether a run area's writer is gone: started more than ``stale_after_s`` ago, or owned by a process of this
    host that no longer exists. An area without a readable owner.json is judged by its folder's age."""
    owner = read_owner(area)
    started = owner.started if owner else area.stat().st_mtime
    if now - started > stale_after_s:
        return True
    return owner is not None and owner.host == _host() and not process_exists(owner.pid)


def read_owner(area: Path) -> Owner | None:
    """The area's owner record, or None when owner.json is missing or unreadable (killed while writing it)."""
    try:
        record = json.loads((area / OWNER_FILE).read_text())
        return Owner(host=str(record["host"]), pid=int(record["pid"]), started=float(record["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 checks without sending anything)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows: ask for a handle instead
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if handle:
            ctypes.windll.kernel32.CloseHandle(handle)
        return bool(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _host() -> str:
    """This machine's name, reduced to the characters a run area's name allows."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
