"""`ctprep index STORE`: rebuild index.parquet from the complete cases in the store, under the store lock.

Convert ends with the same step; it is also the one to run after `ctprep convert --shard` jobs, or after a
convert whose client died once its workers had written their cases (docs/scaling.md)."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ctprep.atomic import remove_temp_files
from ctprep.index import build_index, write_index
from ctprep.location import ObjectLocation, is_object, open_location
from ctprep.lock import store_lock
from ctprep.partials import STALE_AFTER_S, clear_partial
from ctprep.splits import SplitConfig, assign_splits
from ctprep.store import CASES, SliceStore, update_root_attrs

INDEX_LOCK_WAIT_S = 600.0  # a writer finishing a big index (or a repair) may hold the lock for minutes


def rebuild_index(store_path: Path, split: SplitConfig | None = None, drop_obsolete: bool = False,
                  wait_s: float = INDEX_LOCK_WAIT_S) -> pd.DataFrame:
    """Rebuild and write index.parquet from every complete case; returns it. ``split`` (None: the store's recorded
    split config, default for none) is recorded in the root attributes; unchanged files keep their bytes.

    Waits up to ``wait_s`` for the store lock; the cases are already committed, so a timeout says to run
    `ctprep index STORE` later.
    """
    then = f"the cases are written: run `ctprep index {store_path}` once it has finished"
    with store_lock(store_path, wait_s=wait_s, then=then):
        store = SliceStore.open(store_path)
        split = split or SplitConfig.from_attrs(store.attrs.get("split_config"))
        unlabeled = [case_id for case_id in store.case_ids() if not store.has_mask(case_id)]  # they go to train
        index = build_index(store, assign_splits(store.case_ids(), split, unlabeled))
        write_index(store_path, index)
        update_root_attrs(store_path, {"split_config": split.to_attrs()}, drop_obsolete=drop_obsolete)
    return index


def index_store(store_path: Path, stale_after_s: float = STALE_AFTER_S) -> pd.DataFrame:
    """`ctprep index`: clear leftovers of killed writers (as convert does when it starts), then rebuild the index
    from the cases present with the store's split config; returns the index."""
    store_path = open_location(store_path)
    SliceStore.open(store_path)  # a missing or old store: one line saying what to do, before any lock
    with store_lock(store_path, wait_s=INDEX_LOCK_WAIT_S):
        clear_leftovers(store_path, stale_after_s)
    return rebuild_index(store_path)


def index_rows(index: pd.DataFrame) -> list[tuple[str, object]]:
    """(what, value) rows of `ctprep index`'s summary table: cases and slices per split, lesion slices."""
    rows: list[tuple[str, object]] = [("cases", int(index["case_id"].nunique())), ("slices", len(index)),
                                      ("lesion slices", int(index["has_lesion"].sum()))]
    for split, cases in index.groupby("split", sort=True)["case_id"].nunique().items():
        rows.append((f"{split} cases", int(cases)))
    return rows


def clear_leftovers(store_path: Path, stale_after_s: float = STALE_AFTER_S, runs: bool = True) -> None:
    """Remove what killed writers left: partial cases of lock holders, with ``runs`` abandoned run areas too
    (``ctprep.partials``), and stray temp files of index and root metadata writes; in object storage, case
    prefixes without zarr.json (killed writers') older than ``stale_after_s``. Call under the store lock."""
    if is_object(store_path):
        clear_orphan_cases(store_path, stale_after_s)
        return
    clear_partial(store_path, stale_after_s, runs=runs)
    remove_temp_files(store_path)  # ctprep.atomic's .<random>.index.parquet, .<random>.zarr.json
    for stray in store_path.glob("zarr.*.partial"):  # zarr's own temp names (stores of ctstack 0.1)
        stray.unlink(missing_ok=True)


def clear_orphan_cases(store: ObjectLocation, stale_after_s: float = STALE_AFTER_S) -> int:
    """In object storage: delete the case prefixes that have no zarr.json (a writer was killed before committing
    the case) and whose newest object is older than ``stale_after_s`` (a live writer's case is younger); returns
    how many. One listing of cases/."""
    newest: dict[str, float] = {}
    committed = set()
    for key, _, modified in (store / CASES).listing():
        case, _, rest = key.partition("/")
        if rest == "zarr.json":
            committed.add(case)
        elif rest:
            newest[case] = max(modified, newest.get(case, modified))
    now = time.time()
    stale = [case for case, modified in newest.items() if case not in committed and now - modified > stale_after_s]
    for case in stale:
        (store / CASES / case).delete_prefix()
    return len(stale)
