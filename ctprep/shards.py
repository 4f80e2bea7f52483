"""Cheap damage checks of a store's cases (metadata reads and file stats, no decoding) and the per-case record of
shard files (sizes, sha256) they compare against; see docs/store-format.md, "Recorded for verification"."""
from __future__ import annotations

import hashlib
import json
from itertools import product
from pathlib import Path

from ctprep.errors import StoreFormatError
from ctprep.location import StoreLocation, is_object, open_location


def repair_hint(path: Path) -> str:
    """What to do about a damaged store."""
    return f"run `ctprep verify {path} --repair RAW` with the raw folder it was converted from"


def damage_error(path: Path, faults: list[str]) -> StoreFormatError:
    """One-line StoreFormatError for the first fault (and how many more), with the repair command."""
    more = f" (+{len(faults) - 1} more faults)" if len(faults) > 1 else ""
    return StoreFormatError(f"{faults[0]}{more}; {repair_hint(path)}")


def file_sha256(path: StoreLocation) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks (an object's, read whole)."""
    if is_object(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * 1024**2), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_keys(array_dir: StoreLocation, meta: dict | None = None) -> list[str]:
    """Keys ('c/0/0/0') of every shard file the array needs, from its zarr.json (``meta`` if already read)."""
    meta = read_metadata(open_location(array_dir) / "zarr.json") if meta is None else meta
    try:
        shape = [int(n) for n in meta["shape"]]
        grid = [int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        sep = str(meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StoreFormatError(f"{array_dir}/zarr.json: expected Zarr array metadata, found no shape or chunk "
                               f"grid ({err!r}); restore it or re-convert the case") from err
    counts = [-(-n // c) if c > 0 else 0 for n, c in zip(shape, grid)]
    return [sep.join(["c", *map(str, idx)]) for idx in product(*(range(c) for c in counts))]


def shard_record(array_dir: StoreLocation) -> dict:
    """{shard key: {"bytes", "sha256"}} of an array just written: the per-case ``shards`` attribute."""
    array_dir = open_location(array_dir)
    if is_object(array_dir):
        shards = {key: (array_dir / key).read_bytes() for key in shard_keys(array_dir)}
        return {key: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for key, data in shards.items()}
    return {key: {"bytes": (array_dir / key).stat().st_size, "sha256": file_sha256(array_dir / key)}
            for key in shard_keys(array_dir)}


def read_metadata(path: StoreLocation) -> dict:
    """A zarr.json as a dict; StoreFormatError when it is unreadable (FileNotFoundError passes through)."""
    try:
        meta = json.loads(open_location(path).read_bytes())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise StoreFormatError(f"{path}: expected Zarr metadata (JSON), found unreadable bytes ({err}); "
                               "restore it or re-convert the case") from err
    if not isinstance(meta, dict):
        raise StoreFormatError(f"{path}: expected Zarr metadata (a JSON object), found {type(meta).__name__}")
    return meta


def is_labeled(attrs: dict) -> bool:
    """Whether a case's attributes say it has a mask array."""
    return bool(attrs.get("labeled", attrs.get("lesion_pixels") is not None))


def case_faults(store_path: StoreLocation | str, case_id: str, size: int,
                index_slices: int | None = None) -> list[str]:
    """One line per structural fault of a case: missing case or array metadata, shapes that disagree with
    n_slices (and the index's row count, when given), shard files missing or not of their recorded size.
    In object storage the case's sizes come from one listing."""
    store_path = open_location(store_path)
    folder = store_path / "cases" / case_id
    try:
        attrs = read_metadata(folder / "zarr.json").get("attributes") or {}
    except FileNotFoundError:
        return [f"{folder}: case {case_id!r} is missing from the store (expected cases/{case_id}/zarr.json, "
                "found no file)"]
    except StoreFormatError as err:
        return [str(err)]
    n_slices = attrs.get("n_slices")
    faults = []
    if index_slices is not None and index_slices != n_slices:
        faults.append(f"{store_path / 'index.parquet'}: case {case_id!r} has {index_slices} slices in the index "
                      f"(expected the case's n_slices, {n_slices})")
    records = attrs.get("shards") or {}
    pixels = attrs.get("lesion_pixels") or []
    arrays = {"image": True, "mask": any(pixels)} if is_labeled(attrs) else {"image": True}
    sizes = folder.sizes() if is_object(folder) else None
    for name, has_data in arrays.items():
        faults += array_faults(folder / name, (n_slices, size, size), records.get(name), has_data, sizes)
    rater_ids = attrs.get("rater_ids")
    if is_labeled(attrs) and rater_ids is not None:  # format v3: every labeled case has its rater masks
        faults += array_faults(folder / "raters", (len(rater_ids), n_slices, size, size), records.get("raters"),
                               any(attrs.get("raters_with_lesion") or []), sizes)
    pseudo = attrs.get("pseudo")
    if pseudo is not None and not is_labeled(attrs):  # format v4: an unlabeled case's pseudo-label
        faults += array_faults(folder / "pseudo", (n_slices, size, size), records.get("pseudo"),
                               any(pseudo.get("lesion_pixels") or []), sizes)
    return faults


def array_faults(array_dir: StoreLocation, shape: tuple, record: dict | None, has_data: bool = True,
                 case_sizes: dict[str, int] | None = None) -> list[str]:
    """Faults of one array: metadata missing, shape other than ``shape``, shards missing or of another size than
    recorded. Without a record (stores written before shards were recorded) a shard may be absent only when the
    array holds no data (``has_data`` false: zarr did not write all-zero shards then). ``case_sizes`` (key below
    the case -> bytes, one listing) replaces a stat per shard in object storage."""
    array_dir = open_location(array_dir)
    meta_path = array_dir / "zarr.json"
    try:
        meta = read_metadata(meta_path)
        found = tuple(meta.get("shape") or ())
    except FileNotFoundError:
        return [f"{meta_path}: {array_dir.name} array metadata missing (expected a Zarr array, found no file)"]
    except StoreFormatError as err:
        return [str(err).split("; ")[0]]
    if found != tuple(shape):
        axes = "n_slices, size, size" if len(shape) == 3 else "raters, n_slices, size, size"
        return [f"{meta_path}: {array_dir.name} array of shape {list(found)} (expected {list(shape)}: {axes})"]
    faults = []
    for key in shard_keys(array_dir, meta):
        expected = (record or {}).get(key, {}).get("bytes")
        try:
            found_bytes = _shard_bytes(array_dir, key, case_sizes)
        except FileNotFoundError:
            if record is not None or has_data:
                want = f"a shard of {expected} bytes" if expected is not None else "a shard file"
                faults.append(f"{array_dir / key}: {array_dir.name} shard missing (expected {want}, found no file)")
            continue
        if expected is not None and found_bytes != expected:
            faults.append(f"{array_dir / key}: {array_dir.name} shard truncated or changed (expected {expected} "
                          f"bytes, found {found_bytes})")
    return faults


def _shard_bytes(array_dir: StoreLocation, key: str, case_sizes: dict[str, int] | None) -> int:
    """Size of one shard file: from the case's listing when given, else a stat; FileNotFoundError when absent."""
    if case_sizes is None:
        return (array_dir / key).stat().st_size
    listed = case_sizes.get(f"{array_dir.name}/{key}")
    if listed is None:
        raise FileNotFoundError(str(array_dir / key))
    return listed
