"""Where ctstack may write a result: never over a slice store's own files, never a folder where a file goes.

A store's reserved files are what the format owns: ``zarr.json`` at any depth, ``index.parquet``, ``.lock``,
and everything under ``cases/`` and ``.partial/``. Anything else inside a store (``STORE/plans/*.parquet``,
the default plan location) stays writable. Every ctstack store above an output path counts, not only the one
named on the command line: links are resolved, then each parent folder holding a ``zarr.json`` with the
ctstack format attribute is a store.
"""
from __future__ import annotations

import json
from pathlib import Path

from ctprep.errors import UsageError
from ctprep.location import ObjectLocation, StoreLocation, is_object
from ctprep.store import FORMAT_NAME, RESERVED

GROUP_FILE = "zarr.json"
RESERVED_TOP = frozenset(RESERVED)  # the store root's own entries
ALLOWED_EXAMPLE = "plans/"  # where a file output inside a store may go


def is_store(folder: Path) -> bool:
    """Whether ``folder`` is the root of a ctstack store (its zarr.json names the ctstack format)."""
    try:
        metadata = json.loads((Path(folder) / GROUP_FILE).read_text())
    except (OSError, ValueError):  # no zarr.json, unreadable, or not JSON: not a store we can recognise
        return False
    return isinstance(metadata, dict) and (metadata.get("attributes") or {}).get("format") == FORMAT_NAME


def reserved_in(path: Path, is_folder: bool = False) -> tuple[Path, Path] | None:
    """(store, path relative to it) when ``path`` (links resolved) is one of a store's reserved files, else None.

    The store folder itself is reserved for a file output but not for an output folder (figures may go there).
    """
    resolved = Path(path).resolve()
    for store in (resolved, *resolved.parents):
        if not is_store(store):
            continue
        relative = resolved.relative_to(store)
        parts = relative.parts
        if (not parts and not is_folder) or (parts and _reserved(parts)):
            return store, relative
    return None


def check_output(path: StoreLocation, what: str = "output") -> StoreLocation:
    """UsageError unless ``path`` may be written as a file: not an existing folder, not a store's reserved file.
    An object-storage key is checked against its own store's reserved names."""
    if is_object(path):
        return _check_object_output(path, what)
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: expected a file path for the {what}, found a folder; name a file inside it")
    _refuse_reserved(path, what, is_folder=False)
    return path


def check_output_dir(folder: Path, what: str = "output folder") -> Path:
    """UsageError unless files may be written into ``folder``: not an existing file, not inside a store's own files."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: expected a folder for the {what}, found a file; choose a folder path")
    _refuse_reserved(folder, what, is_folder=True)
    return folder


def check_outputs(*paths: Path | None, what: str = "output") -> None:
    """check_output on every path given (None skipped): call before any work so nothing is half written."""
    for path in paths:
        if path is not None:
            check_output(path, what)


def _refuse_reserved(path: Path, what: str, is_folder: bool) -> None:
    found = reserved_in(path, is_folder)
    if found is None:
        return
    store, relative = found
    inside = "the store folder itself" if not relative.parts else f"its reserved {relative.as_posix()}"
    raise UsageError(f"{path}: expected the {what} outside the files of store {store}, found {inside}; "
                     f"write it beside the store or under {store / ALLOWED_EXAMPLE}")


def _reserved(parts: tuple[str, ...] | list[str]) -> bool:
    """Whether a path inside a store (its parts) is one of the store's own files (cases/, the index, zarr.json)."""
    return parts[0] in RESERVED_TOP or GROUP_FILE in parts


def _check_object_output(key: ObjectLocation, what: str) -> ObjectLocation:
    """UsageError when an object-storage key is one of its store's reserved files (outputs go below plans/)."""
    if _reserved(key.key.split("/")):
        raise UsageError(f"{key}: expected the {what} outside the files of store {key.store_root}, found its "
                         f"reserved {key.key}; write it under {key.store_root / ALLOWED_EXAMPLE.rstrip('/')}/")
    return key
