"""`ctprep verify STORE [--repair RAW]`: check every case's arrays against the index and the record made at convert
time (structure, shard sizes and checksums, decoded lesion counts); name each damaged case; repair by re-converting.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from zarr.core.group import GroupMetadata

from ctprep import __version__
from ctprep.arrays import write_group_metadata
from ctprep.console import echo, print_problems, print_table, track
from ctprep.errors import StoreFormatError, StoreNotFoundError, UsageError
from ctprep.location import StoreLocation, is_object, open_location, require_local
from ctprep.lock import store_lock
from ctprep.shards import case_faults, file_sha256
from ctprep.store import (CASES, FORMAT_NAME, FORMAT_VERSION, INDEX_FILE, PARTIAL, SHARDS, SliceStore, StoreLayout,
                          stored_cases)


@dataclass(frozen=True)
class Damage:
    """One fault of one case; ``arrays`` faults need the case re-converted, the others only a rebuilt index."""

    case_id: str
    reason: str
    arrays: bool = True


@dataclass
class VerifyReport:
    """What ``verify`` found: cases checked, damaged cases, and cases that could only be checked structurally."""

    store_path: Path
    cases: int = 0
    damaged: list[Damage] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # no recorded checksums (written before they were)

    @property
    def damaged_cases(self) -> list[str]:
        """Ids of the damaged cases, sorted, each once."""
        return sorted({d.case_id for d in self.damaged})


@dataclass
class RepairReport:
    """What ``repair`` did: the verify before and after, the root restored, the cases re-converted."""

    before: VerifyReport
    after: VerifyReport
    restored_root: bool = False
    reconverted: list[str] = field(default_factory=list)
    not_in_raw: list[str] = field(default_factory=list)  # damaged cases RAW has no source for (left as they are)
    failed: list[str] = field(default_factory=list)  # convert's failure lines


def verify(store_path: Path, progress: bool = True) -> VerifyReport:
    """Check every case of the store and of its index; see the module docstring. Reads every array once."""
    store = SliceStore.open(_existing(store_path, "STORE"))
    report = VerifyReport(store.path)
    index = _index_rows(store, report)
    case_ids = sorted(set(store.case_ids()) | set(index))
    report.cases = len(case_ids)
    for case_id in track(case_ids, "verifying", unit="case") if progress else case_ids:
        report.damaged += check_case(store, case_id, index.get(case_id), report)
    return report


def _existing(path: StoreLocation | str, what: str) -> StoreLocation:
    """``path`` as a location; UsageError (exit 2) when a local one does not exist (a URL is checked on opening)."""
    location = open_location(path)
    if not is_object(location) and not location.exists():
        raise UsageError(f"{path}: expected an existing {what} folder, found nothing; check the path")
    return location


def _index_rows(store: SliceStore, report: VerifyReport) -> dict:
    """case_id -> that case's index rows; a missing or unreadable index is recorded as a store-wide fault."""
    from ctprep.index import read_index

    try:
        index = read_index(store.path, check=False)
    except (StoreNotFoundError, StoreFormatError, OSError, ValueError) as err:
        report.damaged.append(Damage("(index)", str(err).split("; ")[0], arrays=False))
        return {}
    return {str(case_id): rows for case_id, rows in index.groupby("case_id", sort=True)}


def check_case(store: SliceStore, case_id: str, rows, report: VerifyReport) -> list[Damage]:
    """The faults of one case: index rows, structure (cheap), then checksums and decoded lesion counts."""
    faults = case_faults(store.path, case_id, store.layout.size)
    if faults:
        return [Damage(case_id, fault) for fault in faults]
    attrs = store.case_attrs(case_id)
    found = _index_faults(store.path / INDEX_FILE, case_id, attrs, rows)
    records = attrs.get(SHARDS)
    if records is None:
        report.unrecorded.append(case_id)
    found += [Damage(case_id, fault) for fault in _checksum_faults(store.path / CASES / case_id, records or {})]
    return found + _content_faults(store, case_id, attrs, rows)


def _index_faults(index_path: Path, case_id: str, attrs: dict, rows) -> list[Damage]:
    """Index rows that disagree with the case: missing, another slice count, other lesion pixels."""
    if rows is None:
        return [Damage(case_id, f"{index_path}: case {case_id!r} has no rows (expected {attrs.get('n_slices')})",
                       arrays=False)]
    n_slices = attrs.get("n_slices")
    if len(rows) != n_slices or set(rows["n_slices"]) != {n_slices}:
        return [Damage(case_id, f"{index_path}: case {case_id!r} has {len(rows)} rows with n_slices "
                                f"{sorted(set(rows['n_slices']))} (expected {n_slices})", arrays=False)]
    recorded = attrs.get("lesion_pixels") or [0] * n_slices
    if list(rows.sort_values("slice")["lesion_pixels"]) != list(recorded):
        return [Damage(case_id, f"{index_path}: case {case_id!r} lesion_pixels differ from the case's record",
                       arrays=False)]
    return _pseudo_index_faults(index_path, case_id, attrs.get("pseudo"), rows.sort_values("slice"))


def _pseudo_index_faults(index_path: Path, case_id: str, record: dict | None, rows) -> list[Damage]:
    """The index's pseudo columns against the case's pseudo-label record (False, 0 and NaN without one)."""
    n_slices = len(rows)
    pixels = np.asarray((record or {}).get("lesion_pixels") or [0] * n_slices, dtype=np.int64)
    confidence = np.asarray((record or {}).get("confidence") or [np.nan] * n_slices, dtype=np.float32)
    found = rows["pseudo_confidence"].to_numpy(np.float32)
    same = (np.array_equal(rows["pseudo_lesion_pixels"].to_numpy(np.int64), pixels)
            and np.array_equal(rows["pseudo_has_lesion"].to_numpy(bool), pixels > 0)
            and np.array_equal(found, confidence, equal_nan=True))
    if same:
        return []
    return [Damage(case_id, f"{index_path}: case {case_id!r} pseudo columns differ from the case's pseudo-label "
                            "record", arrays=False)]


def _checksum_faults(folder: Path, records: dict) -> list[str]:
    """Shards whose sha256 differs from the one recorded at convert time."""
    faults = []
    for name, shards in records.items():
        for key, record in shards.items():
            found = file_sha256(folder / name / key)
            if found != record.get("sha256"):
                faults.append(f"{folder / name / key}: {name} shard checksum differs (expected sha256 "
                              f"{str(record.get('sha256'))[:12]}…, found {found[:12]}…)")
    return faults


def _content_faults(store: SliceStore, case_id: str, attrs: dict, rows) -> list[Damage]:
    """Decode every array: unreadable shards, and mask lesion pixels per slice other than recorded."""
    try:
        store.read_image_raw(case_id)
        mask = store.read_mask(case_id)
        if attrs.get("rater_ids") is not None:
            store.read_raters(case_id)
        pseudo = store.read_pseudo(case_id)
    except StoreFormatError as err:
        return [Damage(case_id, str(err).split("; ")[0])]
    if pseudo is not None:
        return [Damage(case_id, fault) for fault in _pixel_faults(store.path / CASES / case_id / "pseudo", pseudo,
                                                                 attrs["pseudo"].get("lesion_pixels"))]
    if mask is None:
        return []
    return [Damage(case_id, fault) for fault in _pixel_faults(store.path / CASES / case_id / "mask", mask,
                                                             attrs.get("lesion_pixels"))]


def _pixel_faults(array_dir: Path, mask: np.ndarray, recorded: list[int] | None) -> list[str]:
    """The one fault of a mask whose lesion pixels per slice differ from the recorded ones ([] when equal)."""
    found = mask.reshape(mask.shape[0], -1).astype(bool).sum(axis=1)
    recorded = np.asarray(recorded or [], dtype=np.int64)
    if found.shape == recorded.shape and (found == recorded).all():
        return []
    bad = int((found != recorded).sum()) if found.shape == recorded.shape else len(found)
    return [f"{array_dir}: lesion pixels differ on {bad} slices (expected {int(recorded.sum())} in all, found "
            f"{int(found.sum())})"]


def repair(store_path: Path, raw: Path, workers: int | None = None, progress: bool = True,
           allow_tilt: bool = False) -> RepairReport:
    """Restore a missing root zarr.json, set damaged cases aside, re-convert them from ``raw`` (convert skips the
    healthy ones and rebuilds the index; ``allow_tilt`` as convert's), then verify again."""
    from ctprep.convert import ConvertConfig, convert
    from ctprep.discover import find_cases

    require_local(open_location(store_path), "ctprep verify --repair")
    store_path, raw = _existing(store_path, "STORE"), _existing(raw, "RAW")
    with store_lock(store_path):
        restored = restore_root(store_path)
    before = verify(store_path, progress)
    in_raw = {case.case_id for case in find_cases(raw).cases}
    damaged = sorted({d.case_id for d in before.damaged if d.arrays} - {"(index)"})
    with store_lock(store_path):
        for case_id in damaged:
            if case_id in in_raw:
                _set_aside(store_path, case_id)
    layout = SliceStore.open(store_path).layout
    cfg = ConvertConfig(window_hu=layout.window_hu, size=layout.size, dtype=layout.dtype, workers=workers,
                        allow_tilt=allow_tilt)
    converted = convert(raw, store_path, cfg, progress=progress)
    return RepairReport(before, verify(store_path, progress), restored,
                        reconverted=[c for c in damaged if c in converted.converted],
                        not_in_raw=[c for c in damaged if c not in in_raw], failed=list(converted.failed))


def print_report(report: VerifyReport, fixed: RepairReport | None = None) -> None:
    """Print what verify (and, when given, repair) found and did: `ctprep verify`'s output."""
    if fixed is not None:
        if fixed.restored_root:
            echo("restored root zarr.json from the cases' layout; split config is the default: re-run "
                 "`ctsample split` if the store used other split options")
        echo(f"damaged before repair: {len(fixed.before.damaged_cases)}; re-converted: "
             f"{', '.join(fixed.reconverted) or 'none'}")
        print_problems([f"{case_id}: no source in RAW; left damaged" for case_id in fixed.not_in_raw], fixed.failed)
    if report.unrecorded:
        echo(f"{len(report.unrecorded)} cases have no recorded checksums (written by an older ctstack): "
             "checked for structure and lesion counts only")
    if report.damaged:
        print_table(f"damaged cases in {report.store_path}", ["case", "fault"],
                    [(d.case_id, d.reason) for d in report.damaged])
    echo(f"{report.cases} cases checked, {len(report.damaged_cases)} damaged")


def _set_aside(store_path: Path, case_id: str) -> None:
    """Move a damaged case into .partial/ (one rename; convert clears .partial/) and remove it. Under the lock."""
    aside = Path(store_path) / PARTIAL / f"damaged-{case_id}-{uuid.uuid4().hex[:8]}"
    aside.parent.mkdir(exist_ok=True)
    os.replace(Path(store_path) / CASES / case_id, aside)
    shutil.rmtree(aside, ignore_errors=True)


def restore_root(store_path: Path) -> bool:
    """Recreate a missing root zarr.json from the cases' recorded layout; returns whether it did. Under the lock.

    The split config is not recoverable: convert then uses the default one (the message says how to redo others).
    """
    store_path = Path(store_path)
    if (store_path / "zarr.json").exists() or not stored_cases(store_path):
        return False
    layouts = {json.dumps(_case_layout(case), sort_keys=True) for case in stored_cases(store_path)}
    if len(layouts) != 1 or "null" in layouts:
        raise StoreFormatError(f"{store_path / 'zarr.json'}: root metadata missing and the cases do not record one "
                               f"layout (expected one, found {len(layouts)}); re-convert into a new store with "
                               f"`ctprep convert RAW NEW_STORE`")
    layout = StoreLayout.from_attrs(json.loads(layouts.pop()))
    if not (store_path / CASES / "zarr.json").exists():
        write_group_metadata(store_path / CASES, GroupMetadata())
    rules = {_case_attr(case, "consensus") for case in stored_cases(store_path)} - {None}
    consensus = {"consensus": rules.pop()} if len(rules) == 1 else {}  # else SliceStore.consensus's default
    write_group_metadata(store_path, GroupMetadata(attributes={"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                                               "tool_version": __version__, **layout.to_attrs(),
                                                               **consensus}))
    return True


def _case_layout(case_dir: Path) -> dict | None:
    """The ``layout`` attribute a case recorded at convert time (None if it has none)."""
    return _case_attr(case_dir, "layout")


def _case_attr(case_dir: Path, name: str):
    """One attribute a case recorded at convert time (None if it has none)."""
    return (json.loads((case_dir / "zarr.json").read_bytes()).get("attributes") or {}).get(name)
