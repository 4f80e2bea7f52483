"""index.parquet: one row per stored slice, rebuilt deterministically from the complete cases.

Reading the index needs pandas alone: the store module (and with it zarr) is imported only to check the cases
the index lists (``read_index(check=True)``) or to explain an old store's missing columns."""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyarrow.lib import ArrowException

from ctprep.errors import StoreFormatError, StoreNotFoundError
from ctprep.location import StoreLocation, open_location, parquet_bytes, read_parquet, write_file
from ctprep.splits import NO_FOLD, FoldConfig, assign_folds

if TYPE_CHECKING:
    from ctprep.store import SliceStore

INDEX_FILE = "index.parquet"
COLUMNS = ("case_id", "slice", "n_slices", "labeled", "has_lesion", "lesion_pixels", "source_lesion_voxels", "split",
           "fold", "n_raters", "raters_with_lesion", "agreement", "pseudo_has_lesion", "pseudo_lesion_pixels",
           "pseudo_confidence")
PSEUDO_COLUMNS = COLUMNS[-3:]  # format 4: an unlabeled case's pseudo-label (False, 0, NaN where it has none)


def case_rows(case_id: str, n_slices: int, lesion_pixels: list[int] | None, split: str,
              source_voxels: list[int] | None = None, fold: int = NO_FOLD, n_raters: int | None = None,
              raters_with_lesion: list[int] | None = None, agreement: list[float | None] | None = None,
              pseudo: dict | None = None) -> pd.DataFrame:
    """Index rows of one case; ``lesion_pixels`` per slice at stored resolution and ``source_voxels`` per slice
    on the source grid (of the consensus), both None if unlabeled; ``fold`` its cross-validation fold (-1: none).

    Raters (docs/raters.md): ``n_raters`` (default: 1 if labeled, else 0), ``raters_with_lesion`` per slice
    (default: 1 where the mask has lesion) and ``agreement`` per slice (mean pairwise Dice, None/NaN where every
    rater's slice is empty; default: 1.0 where the mask has lesion).

    ``pseudo`` is an unlabeled case's pseudo-label record (``ctprep.pseudo``): its per-slice lesion_pixels and
    confidence fill the pseudo columns (False, 0 and NaN without one)."""
    labeled = lesion_pixels is not None
    pixels = np.asarray(lesion_pixels if labeled else np.zeros(n_slices), dtype=np.int64)
    voxels = np.asarray(source_voxels if source_voxels is not None else np.zeros(n_slices), dtype=np.int64)
    n_raters = (1 if labeled else 0) if n_raters is None else n_raters
    marked = (pixels > 0).astype(np.int64) if raters_with_lesion is None else np.asarray(raters_with_lesion)
    if agreement is None:
        agreement = np.where(pixels > 0, 1.0, np.nan)
    agree = np.array([np.nan if a is None else a for a in agreement], dtype=np.float32)
    pseudo_pixels = np.asarray((pseudo or {}).get("lesion_pixels") or np.zeros(n_slices), dtype=np.int64)
    confidence = (pseudo or {}).get("confidence")
    return pd.DataFrame({
        "case_id": pd.Series([case_id] * n_slices, dtype="string"),
        "slice": np.arange(n_slices, dtype=np.int32),
        "n_slices": np.full(n_slices, n_slices, dtype=np.int32),
        "labeled": np.full(n_slices, labeled, dtype=bool),
        "has_lesion": pixels > 0,
        "lesion_pixels": pixels,
        "source_lesion_voxels": voxels,
        "split": pd.Series([split] * n_slices, dtype="string"),
        "fold": np.full(n_slices, fold, dtype=np.int16),
        "n_raters": np.full(n_slices, n_raters, dtype=np.int16),
        "raters_with_lesion": marked.astype(np.int16) if labeled else np.zeros(n_slices, dtype=np.int16),
        "agreement": agree if labeled else np.full(n_slices, np.nan, dtype=np.float32),
        "pseudo_has_lesion": pseudo_pixels > 0,
        "pseudo_lesion_pixels": pseudo_pixels,
        "pseudo_confidence": (np.asarray(confidence, dtype=np.float32) if confidence is not None
                              else np.full(n_slices, np.nan, dtype=np.float32)),
    })


def build_index(store: SliceStore, splits: dict[str, str]) -> pd.DataFrame:
    """Index of every complete case of ``store``, split per ``splits`` (case_id -> split), folds per the store's
    recorded ``fold_config`` (so a convert that adds cases deals them into the folds without moving others)."""

    attrs = {case_id: store.case_attrs(case_id) for case_id in store.case_ids()}
    unlabeled = {case_id for case_id, a in attrs.items() if a.get("lesion_pixels") is None}
    folds = assign_folds({c: splits[c] for c in attrs}, FoldConfig.from_attrs(store.attrs.get("fold_config")),
                         unlabeled)
    frames = []
    for case_id, case in attrs.items():
        pixels, voxels = case.get("lesion_pixels"), case.get("source_lesion_voxels")
        for needed in ("source_lesion_voxels", "rater_ids", "raters_with_lesion", "agreement"):
            if pixels is not None and case.get(needed) is None:
                from ctprep.store import reconvert_hint

                raise StoreFormatError(f"{store.path}: case {case_id!r} lacks {needed} (written by an older "
                                       f"ctstack); {reconvert_hint(store.path)}")
        n_raters = len(case["rater_ids"]) if pixels is not None else 0
        frames.append(case_rows(case_id, int(case["n_slices"]), pixels, splits[case_id], voxels, folds[case_id],
                                n_raters, case.get("raters_with_lesion"), case.get("agreement"),
                                case.get("pseudo")))
    if not frames:
        return case_rows("", 0, [], "train")
    return pd.concat(frames, ignore_index=True)


def write_index(store_path: StoreLocation | str, index: pd.DataFrame) -> StoreLocation:
    """Replace the store's index.parquet atomically (temp file + os.replace, or one PUT in object storage); rows
    sorted by case, slice."""
    index = with_fold_column(index).loc[:, list(COLUMNS)]
    index = index.sort_values(["case_id", "slice"], kind="stable").reset_index(drop=True)
    target = open_location(store_path) / INDEX_FILE
    write_file(target, parquet_bytes(index, index=False, compression="zstd"))  # atomic file, or one PUT
    return target


def read_index(store_path: StoreLocation | str, check: bool = True) -> pd.DataFrame:
    """Read index.parquet; raises with what to do when it is missing or lacks columns, or (``check``) when a case
    it lists is missing or damaged in the store (``store.check_index_cases``: file stats, no decoding)."""
    store_path = open_location(store_path)
    path = store_path / INDEX_FILE
    if not path.exists():
        raise StoreNotFoundError(f"{path}: no index; run `ctprep convert RAW {store_path}` to build it")
    try:
        index = read_parquet(path)
    except (ArrowException, ValueError, EOFError) as err:  # random bytes, a truncated or corrupt file
        raise StoreFormatError(f"{path}: not a readable index (expected Parquet, found damaged data: "
                               f"{_first_line(err)}); rebuild it with `ctprep convert RAW {store_path}`") from err
    index = with_fold_column(index)
    missing = [c for c in COLUMNS if c not in index.columns]
    if missing:
        from ctprep.store import check_format_version, root_attrs

        check_format_version(store_path, root_attrs(store_path))  # an older store: say so, with the upgrade
        raise StoreFormatError(f"{path}: index lacks columns {missing}; re-run `ctprep convert`")
    if check:
        from ctprep.store import check_index_cases

        check_index_cases(store_path, index)
    return index


def with_fold_column(index: pd.DataFrame) -> pd.DataFrame:
    """``index`` with a ``fold`` column: an index written before folds existed (same format version) has none,
    which means no folds (-1 everywhere)."""
    if "fold" in index.columns:
        return index
    return index.assign(fold=np.full(len(index), NO_FOLD, dtype=np.int16))


def _first_line(err: Exception) -> str:
    """The first line of an error's text, for one-line messages."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def empty_per_lesion(labeled_slices: int, lesion_slices: int) -> float:
    """Empty:lesion slice ratio over labeled slices (NaN without lesion slices: nothing to divide by)."""
    return (labeled_slices - lesion_slices) / lesion_slices if lesion_slices else float("nan")


def lost_slices(index: pd.DataFrame) -> pd.Series:
    """Per row: a slice lost to resizing (labeled, lesion voxels on the source grid, an empty stored mask)."""
    return index["labeled"] & (index["source_lesion_voxels"] > 0) & ~index["has_lesion"]


def rater_disagreement(index: pd.DataFrame) -> pd.Series:
    """Per row: raters disagree on lesion presence (some but not all of them marked the slice)."""
    return (index["raters_with_lesion"] > 0) & (index["raters_with_lesion"] < index["n_raters"])


def lost_to_resize(index: pd.DataFrame) -> tuple[int, int]:
    """(slices, source lesion voxels) lost to resizing (see ``lost_slices``)."""
    lost = lost_slices(index)
    return int(lost.sum()), int(index.loc[lost, "source_lesion_voxels"].sum())


FINGERPRINT_COLUMNS = ("case_id", "slice", "n_slices", "labeled", "has_lesion", "split")  # what a plan depends on
PSEUDO_FINGERPRINT_COLUMNS = ("pseudo_has_lesion", "pseudo_confidence")  # and what a --pseudo plan depends on too


def index_fingerprint(index: pd.DataFrame, pseudo: bool = False) -> str:
    """A short hash of what a plan depends on: per slice, case id, slice, n_slices, labeled, has_lesion and split;
    with ``pseudo`` (plans made with `ctsample plan --pseudo`) also pseudo_has_lesion and pseudo_confidence.

    Plans and runs record it to detect a plan made for another store, for this store before its masks, splits or
    (``pseudo``) pseudo-labels changed, or by an older ctstack (whose fingerprint covered case ids and slice counts
    only). Without ``pseudo`` the hash is exactly the format-3 one, so plans made without --pseudo stay valid.
    Order-independent (rows are sorted by case and slice first) and vectorised: one hash over the column bytes.
    """
    columns = list(FINGERPRINT_COLUMNS) + (list(PSEUDO_FINGERPRINT_COLUMNS) if pseudo else [])
    rows = index.loc[:, columns].astype({"case_id": str, "split": str})
    rows = rows.sort_values(["case_id", "slice"], kind="stable")
    digest = hashlib.sha256(b"ctstack index fingerprint v2\n")
    for column in ("case_id", "split"):  # strings: codes into the sorted unique values, plus those values
        codes, values = pd.factorize(rows[column], sort=True)
        digest.update("\0".join(values).encode() + b"\n")
        digest.update(codes.astype("<i8").tobytes())
    for column, dtype in (("slice", "<i8"), ("n_slices", "<i8"), ("labeled", "u1"), ("has_lesion", "u1")):
        digest.update(rows[column].to_numpy().astype(dtype).tobytes())
    if pseudo:  # NaN (no pseudo-label) hashes as one fixed value: -1 is never a confidence
        digest.update(b"pseudo\n" + rows["pseudo_has_lesion"].to_numpy().astype("u1").tobytes())
        confidence = rows["pseudo_confidence"].to_numpy(np.float64)
        digest.update(np.where(np.isnan(confidence), -1.0, confidence).astype("<f4").tobytes())
    return digest.hexdigest()[:16]
