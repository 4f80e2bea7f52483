"""The slice store, format version 4: a Zarr v3 group of per-case (Z, S, S) arrays (and (R, Z, S, S) rater masks,
and for unlabeled cases an optional (Z, S, S) pseudo-label) plus index.parquet.

Writing is crash- and power-loss-safe and needs no lock: a case is built under its writer's partial area
(``ctprep.partials``), its zarr.json last, fsynced, and renamed into ``cases/`` only when complete
(``ctprep.atomic.publish``); only the index and root attributes are written under the store lock.
Every other part of ctstack reads the store through ``SliceStore``.
"""
from __future__ import annotations

import errno
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zarr
from zarr.core.group import GroupMetadata

from ctprep import __version__
from ctprep.arrays import write_array, write_group_metadata
from ctprep.atomic import publish
from ctprep.crashpoint import crash_point
from ctprep.errors import StoreFormatError, StoreNotFoundError
from ctprep.geometry import CaseGeometry
from ctprep.index import INDEX_FILE
from ctprep.lease import LEASE_FILE
from ctprep.location import StoreLocation, is_object, open_location, zarr_target
from ctprep.raters import DEFAULT_CONSENSUS, check_consensus
from ctprep.shards import case_faults, damage_error, is_labeled, repair_hint, shard_record
from ctprep.window import STORED_DTYPES, decode

FORMAT_NAME = "ctstack-slice-store"
FORMAT_VERSION = 4  # 4: pseudo-labels; 3: per-rater masks; 2: index column and case attribute source_lesion_voxels
FORMAT_CHANGES = {2: "new index column source_lesion_voxels",
                  3: "per-rater masks (cases/<id>/raters) and index columns n_raters, raters_with_lesion, "
                     "agreement",
                  4: "pseudo-labels (cases/<id>/pseudo) and index columns pseudo_has_lesion, pseudo_lesion_pixels, "
                     "pseudo_confidence"}  # what each version added, for the upgrade message
UPGRADABLE = 3  # the oldest version `ctprep upgrade` brings up to date in place (the change is index columns only)
CASES = "cases"
PARTIAL = ".partial"
RATERS = "raters"  # per-case (R, Z, S, S) array of the rater masks; its attribute rater_ids names them
PSEUDO = "pseudo"  # an unlabeled case's optional (Z, S, S) pseudo-label array and its case attribute (ctprep.pseudo)
SHARDS = "shards"  # per-case attribute: {array: {shard key: {"bytes": n, "sha256": hex}}}, recorded at write time


@dataclass(frozen=True)
class StoreLayout:
    """The options that fix a store's arrays: every case in one store shares them."""

    window_hu: tuple[float, float] = (-1000.0, 400.0)  # lung + mediastinum, as in the source study
    size: int = 256  # stored in-plane side S
    dtype: str = "float16"  # float16 in [0, 1]; uint8 0..255 halves the size

    def __post_init__(self) -> None:
        if self.dtype not in STORED_DTYPES:
            raise StoreFormatError(f"stored dtype {self.dtype!r}: expected one of {', '.join(STORED_DTYPES)}")
        if not 8 <= self.size <= 4096:
            raise StoreFormatError(f"size {self.size}: expected 8..4096 pixels")

    def to_attrs(self) -> dict:
        """Root attributes describing this layout."""
        return {"window_hu": list(self.window_hu), "size": self.size, "dtype": self.dtype}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "StoreLayout":
        """Read the layout back from root attributes."""
        lo, hi = attrs["window_hu"]
        return cls(window_hu=(float(lo), float(hi)), size=int(attrs["size"]), dtype=str(attrs["dtype"]))


def create_or_open(path: StoreLocation | str, layout: StoreLayout, consensus: str | None = None) -> "SliceStore":
    """Create a new store at ``path`` or open an existing one whose layout matches ``layout``.

    ``consensus`` (majority, union, intersection) is the rule that formed the stored masks: recorded when the store
    is created (None: majority); an existing store must have been made with it (None: whatever it was made with).
    """
    path = open_location(path)
    if not is_object(path) and path.exists() and not path.is_dir():
        raise StoreFormatError(f"{path}: not a store (expected a folder or a new path, found a file); "
                               "choose another path for the store")
    refuse_links(path)
    if (path / "zarr.json").exists():
        store = SliceStore.open(path)
        if store.layout != layout:
            raise StoreFormatError(
                f"{path}: store was made with {store.layout.to_attrs()}, not {layout.to_attrs()}; "
                "convert into a new store path or pass the store's own options"
            )
        if consensus is not None and store.consensus != check_consensus(consensus):
            raise StoreFormatError(f"{path}: store masks are the {store.consensus} consensus of the raters, not the "
                                   f"{consensus}; convert into a new store path or pass --consensus "
                                   f"{store.consensus}")
        return store
    if stored_cases(path):
        raise StoreFormatError(root_missing_text(path))
    if path.is_dir() and any(p.name not in _CREATION_LEFTOVERS for p in path.iterdir()):
        raise StoreFormatError(f"{path}: exists and is not a ctstack store; choose an empty or new path")
    # cases/ first, root metadata (with every attribute) last in one atomic, fsynced write: a store killed while
    # being created is simply created again, and the .lock file of store_lock is left in place.
    write_group_metadata(path / CASES, GroupMetadata())
    rule = check_consensus(consensus or DEFAULT_CONSENSUS)
    write_group_metadata(path, GroupMetadata(attributes={"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                                         "tool_version": __version__, **layout.to_attrs(),
                                                         "consensus": rule}))
    return SliceStore.open(path)


OBSOLETE_ROOT_ATTRS = ("last_run",)  # per-run statistics that ctstack 0.1 kept in the store; no longer written


def update_root_attrs(path: StoreLocation | str, updates: dict, drop_obsolete: bool = False) -> bool:
    """Set root attributes; returns whether zarr.json was rewritten. Unchanged values leave it byte-identical.

    Obsolete attributes (``OBSOLETE_ROOT_ATTRS``) go whenever the file is rewritten; ``drop_obsolete`` rewrites it
    for them alone (convert passes it when it changed cases, so a no-op run still changes nothing). Call under
    the store lock.
    """
    path = open_location(path)
    metadata = zarr.open_group(zarr_target(path), mode="r", zarr_format=3).metadata
    kept = {k: v for k, v in metadata.attributes.items() if k not in OBSOLETE_ROOT_ATTRS}
    wanted = {**kept, **updates}
    if wanted == kept and (wanted == metadata.attributes or not drop_obsolete):
        return False
    write_group_metadata(path, replace(metadata, attributes=wanted))
    return True


_CREATION_LEFTOVERS = {".lock", LEASE_FILE, CASES, PARTIAL}  # what a lock holder or a killed creation leaves behind


def write_case(path: StoreLocation | str, case_id: str, image: np.ndarray, mask: np.ndarray | None, attrs: dict,
               raters: np.ndarray | None = None, rater_ids: list[str] | None = None, area: Path | None = None) -> None:
    """Write one case atomically: build it under ``area``, its zarr.json last, fsync it, rename it into cases/.

    ``image`` is (Z, S, S) in the store's dtype; ``mask`` (Z, S, S) uint8 {0, 1} or None (unlabeled); ``raters``
    (R, Z, S, S) uint8 {0, 1} with its ``rater_ids`` (every labeled case of a v3 store has them). ``area`` is the
    writer's partial area (``ctprep.partials.run_area``); None builds in ``.partial/`` itself, for callers that
    hold the store lock. An existing case of that name is replaced only once the new one is complete and on disk.
    In object storage (no renames) the case is written in place, its zarr.json last (``write_case_in_place``).
    """
    path = open_location(path)
    arrays = case_arrays(case_id, image, mask, raters, rater_ids)
    if is_object(path):
        write_case_in_place(path / CASES / case_id, case_id, arrays, attrs, rater_ids)
        return
    area = path / PARTIAL if area is None else Path(area)
    tmp = area / f"{case_id}-{uuid.uuid4().hex[:8]}"
    write_case_folder(tmp, case_id, arrays, attrs, rater_ids)
    commit_case(tmp, path / CASES / case_id, area)


def case_arrays(case_id: str, image: np.ndarray, mask: np.ndarray | None, raters: np.ndarray | None,
                rater_ids: list[str] | None) -> dict[str, np.ndarray]:
    """The arrays of one case by name (image, mask, raters), masks as uint8."""
    arrays = {"image": image}
    if mask is not None:
        arrays["mask"] = mask.astype(np.uint8, copy=False)
    if raters is not None:
        if rater_ids is None or len(rater_ids) != raters.shape[0]:
            raise ValueError(f"{case_id}: {raters.shape[0]} rater masks need as many rater ids, found {rater_ids}")
        arrays[RATERS] = raters.astype(np.uint8, copy=False)
    return arrays


def write_case_in_place(folder: StoreLocation, case_id: str, arrays: dict[str, np.ndarray], attrs: dict,
                        rater_ids: list[str] | None = None) -> None:
    """Write a case into object storage, which has no rename: its zarr.json goes first (readers no longer see the
    case), then everything below it, then the new arrays, and the new zarr.json last, which commits the case.

    A writer killed midway leaves a prefix without zarr.json: invisible to readers, replaced by the next convert
    and removed by `ctprep index` (``ctprep.reindex.clear_leftovers``)."""
    (folder / "zarr.json").unlink(missing_ok=True)
    folder.delete_prefix()
    write_case_folder(folder, case_id, arrays, attrs, rater_ids)


def write_case_folder(folder: StoreLocation, case_id: str, arrays: dict[str, np.ndarray], attrs: dict,
                      rater_ids: list[str] | None = None) -> None:
    """Write a case's arrays into ``folder``, then its zarr.json (attributes plus shard records) last."""
    for name, data in arrays.items():
        write_array(folder, name, data, {"rater_ids": list(rater_ids)} if name == RATERS else None)
    crash_point(case_id)  # test-only (ctprep.crashpoint): a writer killed here leaves a case without zarr.json
    shards = {SHARDS: {name: shard_record(folder / name) for name in arrays}}
    write_group_metadata(folder, GroupMetadata(attributes={**attrs, **shards}))  # last: the case is complete


COMMIT_TRIES = 5  # concurrent writers of one case: each try moves the case another writer just published aside


def commit_case(built: Path, target: Path, area: Path) -> None:
    """Rename the complete case folder ``built`` to ``target`` (``ctprep.atomic.publish``), replacing an existing
    one, which is first moved into ``area`` and then removed.

    On a local or shared filesystem the rename is the commit. (On a store without renames, an object store,
    the case's zarr.json written last is what commits it: readers list a case only once its zarr.json exists.)
    Two writers of one case may race; every try that finds the target taken again moves it aside once more.
    """
    trash: list[Path] = []
    try:
        for _ in range(COMMIT_TRIES):
            trash.append(area / f"old-{target.name}-{uuid.uuid4().hex[:8]}")
            try:
                publish(built, target, aside=trash[-1])
                return
            except OSError as err:  # another writer published (or moved aside) the same case between our steps
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or not built.is_dir():
                    raise
        raise OSError(errno.EBUSY, f"{target}: other writers kept replacing this case; run convert again")
    finally:
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)


RESERVED = (CASES, PARTIAL, INDEX_FILE, "zarr.json", ".lock", LEASE_FILE)  # names ctstack writes or removes in a store


def refuse_links(path: Path, names: tuple[str, ...] = RESERVED) -> None:
    """Raise StoreFormatError if any reserved path of the store is a symbolic link: writes and clean-ups there
    would act on whatever the link points to. (The store folder itself may be a link; object stores have none.)"""
    if is_object(path):
        return
    for name in names:
        if (Path(path) / name).is_symlink():
            raise StoreFormatError(f"{Path(path) / name}: expected a real file or folder inside the store, found a "
                                   "symbolic link; ctstack never follows links inside a store: remove the link "
                                   "(move what it points to into the store instead)")


class SliceStore:
    """Read access to a format-v4 store: layout, consensus rule, cases, per-case attributes, images, masks, rater
    masks, pseudo-labels, index."""

    def __init__(self, path: StoreLocation | str, root_attrs: dict) -> None:
        self.path = open_location(path)  # a Path, or an ObjectLocation (ctprep.location) for a URL
        self.attrs = root_attrs
        self.layout = StoreLayout.from_attrs(root_attrs)

    @classmethod
    def open(cls, path: StoreLocation | str) -> "SliceStore":
        """Open and validate a store (a folder or a URL); raises StoreNotFoundError / StoreFormatError with what
        to do."""
        path = open_location(path)
        attrs = root_attrs(path)
        check_format_version(path, attrs)
        return cls(path, attrs)

    @property
    def consensus(self) -> str:
        """The rule that formed every case's stored mask from its raters: majority, union or intersection."""
        return str(self.attrs.get("consensus", DEFAULT_CONSENSUS))

    def case_ids(self) -> list[str]:
        """Complete cases, sorted."""
        return [p.name for p in stored_cases(self.path)]

    def _group(self, case_id: str) -> zarr.Group:
        folder = self.path / CASES / case_id
        if not (folder / "zarr.json").exists():
            raise StoreFormatError(f"{folder}: case {case_id!r} is missing from the store (expected {CASES}/"
                                   f"{case_id}/zarr.json, found no file); {repair_hint(self.path)}")
        try:
            return zarr.open_group(zarr_target(folder), mode="r", zarr_format=3)
        except Exception as err:  # zarr raises several types for damaged metadata
            raise StoreFormatError(f"{folder}/zarr.json: case {case_id!r} metadata unreadable ({err}); "
                                   f"{repair_hint(self.path)}") from err

    def case_attrs(self, case_id: str) -> dict:
        """Per-case attributes (source paths, fingerprint, geometry, lesion_pixels, ...)."""
        return dict(self._group(case_id).attrs)

    def geometry(self, case_id: str) -> CaseGeometry:
        """The case's source geometry record, to invert stored arrays back to the source grid."""
        return CaseGeometry.from_attrs(self.case_attrs(case_id)["geometry"])

    def has_mask(self, case_id: str) -> bool:
        """Whether the case is labeled (from its attributes: a labeled case whose mask is gone is damaged)."""
        return is_labeled(self.case_attrs(case_id))

    def read_image(self, case_id: str, slices: slice | np.ndarray | None = None) -> np.ndarray:
        """Image slices as float32 in [0, 1], shape (n, S, S); ``slices`` indexes axis 0 (all if None)."""
        return decode(self.read_image_raw(case_id, slices))

    def read_image_raw(self, case_id: str, slices: slice | np.ndarray | None = None) -> np.ndarray:
        """Image slices in the stored dtype (float16 or uint8)."""
        return self._read_checked(case_id, "image", slices)

    def read_mask(self, case_id: str, slices: slice | np.ndarray | None = None) -> np.ndarray | None:
        """Mask slices as uint8 {0, 1}, or None when the case is unlabeled."""
        if not self.has_mask(case_id):
            return None
        return self._read_checked(case_id, "mask", slices)

    def rater_ids(self, case_id: str) -> list[str]:
        """The case's rater ids in natural order (the first axis of ``read_raters``); [] for an unlabeled case."""
        return list(self.case_attrs(case_id).get("rater_ids") or [])

    def read_raters(self, case_id: str, slices: slice | np.ndarray | None = None) -> np.ndarray | None:
        """Rater masks as uint8 {0, 1} of shape (R, n, S, S), or None when the case is unlabeled; ``slices``
        indexes the slice axis (all if None)."""
        if not self.has_mask(case_id):
            return None
        return self._read_checked(case_id, RATERS, slices)

    def pseudo_record(self, case_id: str) -> dict | None:
        """The case's pseudo-label record (run, checkpoint_sha256, threshold, per-slice lesion_pixels and
        confidence, ...), or None when it has no pseudo-label (docs/semi-supervised.md)."""
        return self.case_attrs(case_id).get(PSEUDO)

    def read_pseudo(self, case_id: str, slices: slice | np.ndarray | None = None) -> np.ndarray | None:
        """Pseudo-label slices as uint8 {0, 1} of shape (n, S, S), or None when the case has none."""
        if self.pseudo_record(case_id) is None:
            return None
        return self._read_checked(case_id, PSEUDO, slices)

    def source_rater_paths(self, case_id: str) -> dict[str, Path]:
        """Rater id -> the source mask file recorded at convert time (check it against the recorded fingerprint,
        ``case_attrs(case_id)["source"]["raters"][rater]``, before trusting it); {} for an unlabeled case."""
        raters = (self.case_attrs(case_id).get("source") or {}).get("raters") or {}
        return {rater: Path(entry["path"]) for rater, entry in raters.items()}

    def _read_checked(self, case_id: str, name: str, slices: slice | np.ndarray | None) -> np.ndarray:
        """Read an array after the cheap check that every shard is present with its recorded size (Zarr would
        return the fill value for a missing one); a shard that fails to decode is a StoreFormatError too."""
        faults = case_faults(self.path, case_id, self.layout.size)
        if faults:
            raise damage_error(self.path, faults)
        array_dir = self.path / CASES / case_id / name
        try:
            return _read(zarr.open_array(zarr_target(array_dir), mode="r", zarr_format=3), slices)
        except (ValueError, RuntimeError, OSError, EOFError) as err:
            found = " ".join(str(err).split()) or type(err).__name__
            raise StoreFormatError(f"{array_dir}: case {case_id!r} {name} unreadable (expected decodable shards, "
                                   f"found {found}); {repair_hint(self.path)}") from err

    def index(self):
        """The slice index as a pandas DataFrame (see ctprep.index)."""
        from ctprep.index import read_index

        return read_index(self.path)


def root_attrs(path: StoreLocation | str) -> dict:
    """The root attributes of the ctstack store at ``path`` (any format version)."""
    path = open_location(path)
    if not (path / "zarr.json").exists():
        if stored_cases(path):
            raise StoreFormatError(root_missing_text(path))
        raise StoreNotFoundError(f"{path}: no ctstack store here; create one with `ctprep convert RAW {path}`")
    try:
        attrs = dict(zarr.open_group(zarr_target(path), mode="r", zarr_format=3).attrs)
    except Exception as err:  # zarr raises several types for damaged metadata
        raise StoreFormatError(f"{path}: unreadable store metadata ({err}); re-run `ctprep convert`") from err
    if attrs.get("format") != FORMAT_NAME:
        raise StoreFormatError(f"{path}: a Zarr group but not a ctstack store; re-run `ctprep convert`")
    return attrs


def stored_cases(path: StoreLocation | str) -> list[StoreLocation]:
    """Case folders (with their zarr.json) under ``path``/cases, sorted, whether or not the root zarr.json exists.
    On object storage, one listing of cases/ (a case is there once its zarr.json is)."""
    cases = open_location(path) / CASES
    if is_object(cases):
        names = {key.split("/")[0] for key in cases.sizes() if key.count("/") == 1 and key.endswith("/zarr.json")}
        return [cases / name for name in sorted(names)]
    return sorted(p for p in cases.iterdir() if (p / "zarr.json").exists()) if cases.is_dir() else []


def root_missing_text(path: Path) -> str:
    """The one line for a store whose root zarr.json is gone but whose cases are there."""
    return (f"{open_location(path) / 'zarr.json'}: root metadata missing (expected the ctstack store's zarr.json, "
            f"found {len(stored_cases(path))} cases without it); run `ctprep verify {path} --repair RAW` to restore it")


def check_format_version(path: Path, attrs: dict) -> None:
    """StoreFormatError in one line, with the command to run, unless the store is of this ctstack's version."""
    found = attrs.get("format_version")
    if found == FORMAT_VERSION:
        return
    if found == UPGRADABLE:
        raise StoreFormatError(f"{path}: store format version {found}, this ctstack needs version {FORMAT_VERSION} "
                               f"({FORMAT_CHANGES[FORMAT_VERSION]}); upgrade it in place with "
                               f"`ctprep upgrade {path}`")
    if isinstance(found, int) and found < FORMAT_VERSION:
        added = ", ".join(FORMAT_CHANGES[v] for v in range(found + 1, FORMAT_VERSION + 1) if v in FORMAT_CHANGES)
        raise StoreFormatError(f"{path}: store format version {found}, this ctstack needs version {FORMAT_VERSION} "
                               f"({added}); {reconvert_hint(path)}")
    raise StoreFormatError(f"{path}: store format version {found}, this ctstack reads version {FORMAT_VERSION}; "
                           "use a newer ctstack, or re-convert with this one")


def reconvert_hint(path: Path) -> str:
    """What to do with a store written by an older ctstack: convert afresh into a new path (or remove it first)."""
    return f"re-convert into a new store with `ctprep convert RAW NEW_STORE` (or delete {path} first)"


def _read(array: zarr.Array, slices: slice | np.ndarray | None) -> np.ndarray:
    """``slices`` of the slice axis (the first of (Z, S, S), the second of (R, Z, S, S))."""
    lead = (slice(None),) * (array.ndim - 3)
    if slices is None:
        return array[...]
    if isinstance(slices, slice):
        return array[(*lead, slices)]
    return array.get_orthogonal_selection((*lead, np.asarray(slices, dtype=np.int64), slice(None), slice(None)))


def check_index_cases(store_path: StoreLocation | str, index) -> None:
    """StoreFormatError naming the first damaged case of ``index`` (an index DataFrame): rows per case must
    equal its n_slices and the case's arrays must pass ``case_faults``. Cheap: no array is decoded."""
    store_path = open_location(store_path)
    if index.empty:
        return
    size = int(root_attrs(store_path)["size"])
    per_case = index.groupby("case_id", sort=True)["n_slices"].agg(["size", "min", "max"])
    for case_id, (rows, low, high) in per_case.iterrows():
        if not rows == low == high:
            raise StoreFormatError(f"{store_path / INDEX_FILE}: case {case_id!r} has {rows} rows with n_slices "
                                   f"{low}..{high} (expected one value equal to the row count); re-run "
                                   f"`ctprep convert RAW {store_path}` to rebuild the index")
        faults = case_faults(store_path, str(case_id), size, int(rows))
        if faults:
            raise damage_error(store_path, faults)


def disk_bytes(path: StoreLocation | str) -> int:
    """Bytes of every file (object) below ``path``."""
    path = open_location(path)
    if is_object(path):
        return sum(path.sizes().values())
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
