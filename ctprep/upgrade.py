"""`ctprep upgrade`: bring a store of the previous format version up to date in place, when the change between the
two is one that needs no source file (format 3 -> 4: the index gains the pseudo-label columns, empty)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctprep.errors import StoreFormatError
from ctprep.index import INDEX_FILE, PSEUDO_COLUMNS, write_index
from ctprep.location import open_location, require_local
from ctprep.lock import store_lock
from ctprep.store import FORMAT_VERSION, UPGRADABLE, check_format_version, reconvert_hint, root_attrs, \
    update_root_attrs


def upgrade_store(store_path: Path) -> tuple[int, int]:
    """Upgrade ``store_path`` from format UPGRADABLE to FORMAT_VERSION in place; returns (old, new) versions.

    The index is rewritten first (atomically), the root version last: a run killed in between leaves a store that
    an upgrade finishes. A store already current is left untouched; an older one is refused with what to do.
    """
    store_path = require_local(open_location(store_path), "ctprep upgrade")
    found = root_attrs(store_path).get("format_version")
    if found == FORMAT_VERSION:
        return found, found
    if found != UPGRADABLE:
        if isinstance(found, int) and found < UPGRADABLE:
            raise StoreFormatError(f"{store_path}: store format version {found} cannot be upgraded in place "
                                   f"(only version {UPGRADABLE} can); {reconvert_hint(store_path)}")
        check_format_version(store_path, {"format_version": found})  # a newer store: says so
    with store_lock(store_path):
        if root_attrs(store_path).get("format_version") == FORMAT_VERSION:  # another upgrade got there first
            return found, FORMAT_VERSION
        index = pd.read_parquet(store_path / INDEX_FILE)
        write_index(store_path, with_empty_pseudo(index))
        update_root_attrs(store_path, {"format_version": FORMAT_VERSION})
    return found, FORMAT_VERSION


def with_empty_pseudo(index: pd.DataFrame) -> pd.DataFrame:
    """``index`` with the pseudo-label columns of a store that has none (False, 0, NaN), kept where present."""
    empty = {"pseudo_has_lesion": np.zeros(len(index), bool), "pseudo_lesion_pixels": np.zeros(len(index), np.int64),
             "pseudo_confidence": np.full(len(index), np.nan, np.float32)}
    return index.assign(**{k: v for k, v in empty.items() if k not in index.columns and k in PSEUDO_COLUMNS})
