"""Crash- and power-loss-safe writes: build beside the target, fsync, rename over the target, fsync the folder."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_NAME = re.compile(r"\.[0-9a-f]{8}\..+")  # what ``replacing`` names its temp files: .<8 hex>.<target name>
_CAN_SYNC_DIRS = os.name == "posix"  # Windows cannot open a folder to fsync it (NTFS journals renames itself)
_SYNC_OPEN_FLAGS = os.O_RDONLY if _CAN_SYNC_DIRS else os.O_RDWR  # Windows fsync needs a writable handle
_COMPARE_BYTES = 1024**2


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix, so writers pick the right format) and publish it over
    ``path`` when the block succeeds; on any error the temp file is removed and ``path`` is left as it was.

    A temp file with the same bytes as ``path`` is discarded instead, so an unchanged file keeps its mtime.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")
    try:
        yield tmp
        if not (path.is_file() and same_bytes(tmp, path)):
            publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(src: Path, dst: Path, aside: Path | None = None) -> None:
    """Rename ``src`` (a file, or a folder with everything below it) to ``dst`` so that after a power loss
    ``dst`` holds either its old or its complete new content, never a renamed-but-empty file.

    The content and the source folder are fsynced before the rename, the destination and source folders after.
    A folder cannot be renamed over a folder: an existing ``dst`` folder is first renamed to ``aside`` (given
    by the caller, who removes it afterwards).
    """
    src, dst = Path(src), Path(dst)
    sync_tree(src)
    sync_dir(src.parent)
    if aside is not None and dst.is_dir():
        os.replace(dst, aside)
    os.replace(src, dst)
    sync_dir(dst.parent)
    if src.parent != dst.parent:
        sync_dir(src.parent)


def sync_tree(path: Path) -> None:
    """fsync a file, or every file and folder below (and including) a folder."""
    path = Path(path)
    if not path.is_dir():
        _fsync(path, _SYNC_OPEN_FLAGS)
        return
    for folder, _, files in os.walk(path, topdown=False):  # children before the folder that names them
        for name in files:
            _fsync(Path(folder) / name, _SYNC_OPEN_FLAGS)
        sync_dir(Path(folder))


def sync_dir(path: Path) -> None:
    """fsync a folder, so that the names created, renamed or removed in it survive a power loss (POSIX only)."""
    if _CAN_SYNC_DIRS:
        _fsync(Path(path), os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (sizes first, then contents a MiB at a time)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as file_a, open(b, "rb") as file_b:
        while True:
            chunk = file_a.read(_COMPARE_BYTES)
            if chunk != file_b.read(_COMPARE_BYTES):
                return False
            if not chunk:
                return True


def remove_temp_files(folder: Path) -> int:
    """Remove temp files that ``replacing`` left in ``folder`` when its process was killed; returns how many."""
    strays = [p for p in Path(folder).iterdir() if p.is_file() and TEMP_NAME.fullmatch(p.name)]
    for stray in strays:
        stray.unlink(missing_ok=True)
    return len(strays)


def write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (left untouched when it already holds ``data``)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically and durably (left untouched when it already holds ``text``)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)
