"""Pseudo-labels in the store (format 4): ``cases/<id>/pseudo``, a (Z, S, S) uint8 {0, 1} mask that a trained run
predicted for an unlabeled case, with its record (run, checkpoint hash, threshold, per-slice lesion pixels and
confidence) in the case attribute ``pseudo``; the index columns pseudo_has_lesion, pseudo_lesion_pixels and
pseudo_confidence are rebuilt from that record (docs/semi-supervised.md).

A case gains, loses or changes its pseudo-label atomically: the case folder is rebuilt under ``.partial/`` (its
other files hard-linked, never rewritten in place), fsynced and renamed over the old one (``ctprep.atomic``).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.core.group import GroupMetadata

from ctprep.arrays import write_array, write_group_metadata
from ctprep.atomic import publish
from ctprep.errors import StoreFormatError
from ctprep.shards import read_metadata, shard_record
from ctprep.store import CASES, PARTIAL, PSEUDO, SHARDS
RECORD_LISTS = ("lesion_pixels", "confidence")  # per-slice lists a pseudo record must hold


def write_pseudo(store_path: Path, case_id: str, mask: np.ndarray | None, record: dict | None = None) -> None:
    """Give an unlabeled case the pseudo-label ``mask`` (Z, S, S) {0, 1} with its ``record`` (per-slice
    ``lesion_pixels`` and ``confidence`` plus provenance), or with ``mask`` None remove any it has.

    Atomic and durable: readers see the old case or the new one; a write that fails leaves nothing behind in
    ``.partial/`` (no hard link to a live file survives it). Call under the store lock.
    """
    store_path = Path(store_path)
    case_dir = store_path / CASES / case_id
    attrs = dict(read_metadata(case_dir / "zarr.json").get("attributes") or {})
    if attrs.get("labeled", attrs.get("lesion_pixels") is not None):
        raise StoreFormatError(f"{case_dir}: case {case_id!r} has a mask; pseudo-labels are for unlabeled cases only")
    if mask is None and PSEUDO not in attrs:
        return  # nothing to remove: the case stays byte-identical
    if mask is not None:
        check_record(case_id, mask, record, int(attrs["n_slices"]))
    tmp = store_path / PARTIAL / f"{case_id}-{uuid.uuid4().hex[:8]}"
    try:
        _build_case(case_dir, tmp, attrs, mask, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    trash = store_path / PARTIAL / f"old-{case_id}-{uuid.uuid4().hex[:8]}"
    publish(tmp, case_dir, aside=trash)
    shutil.rmtree(trash, ignore_errors=True)


def _build_case(case_dir: Path, tmp: Path, attrs: dict, mask: np.ndarray | None, record: dict | None) -> None:
    """The new case folder at ``tmp``: the old one's files hard-linked (its pseudo-label and zarr.json left out),
    the pseudo array when ``mask`` is given, and a fresh zarr.json with the updated attributes and shard record."""
    shards = {k: v for k, v in (attrs.get(SHARDS) or {}).items() if k != PSEUDO}
    attrs = {k: v for k, v in attrs.items() if k != PSEUDO}
    link_tree(case_dir, tmp, skip=("zarr.json", PSEUDO))
    if mask is not None:
        group = zarr.open_group(str(tmp), mode="a")
        write_array(group, PSEUDO, mask.astype(np.uint8, copy=False))
        shards[PSEUDO] = shard_record(tmp / PSEUDO)
        attrs[PSEUDO] = record
    write_group_metadata(tmp, GroupMetadata(attributes={**attrs, SHARDS: shards}))


def check_record(case_id: str, mask: np.ndarray, record: dict | None, n_slices: int) -> None:
    """ValueError unless ``mask`` is (n_slices, S, S) and ``record`` lists per-slice values matching it."""
    if mask.ndim != 3 or mask.shape[0] != n_slices:
        raise ValueError(f"{case_id}: pseudo mask of shape {mask.shape}, expected ({n_slices}, S, S)")
    if record is None or any(len(record.get(key) or []) != n_slices for key in RECORD_LISTS):
        raise ValueError(f"{case_id}: a pseudo record needs {', '.join(RECORD_LISTS)} with {n_slices} values each")
    counted = mask.reshape(n_slices, -1).astype(bool).sum(axis=1)
    if list(counted) != list(record["lesion_pixels"]):
        raise ValueError(f"{case_id}: the pseudo record's lesion_pixels differ from the mask's")


def link_tree(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Recreate folder ``src`` as ``dst`` with every file hard-linked (copied where links are not possible),
    leaving out the top-level entries named in ``skip``."""
    for folder, dirs, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(folder) / name, dst / rel / name)
            except OSError:
                shutil.copy2(Path(folder) / name, dst / rel / name)
