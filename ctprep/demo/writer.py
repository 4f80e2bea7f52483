"""The demo set on disk: options, the covid19/nnU-Net layouts, each case's NIfTI files and the set's summary."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ctprep.atomic import write_bytes, write_text
from ctprep.demo.phantom import Phantom, make_phantom
from ctprep.demo.raters import MAX_RATERS, lesion_dice, rater_masks
from ctprep.demo.realistic import DIFFICULTIES
from ctprep.errors import UsageError
from ctprep.nifti import gzip_bytes
from ctprep.workers import process_pool

if TYPE_CHECKING:
    import pandas as pd

LAYOUTS = ("covid19", "nnunet")
FORMATS = ("nifti", "dicom")  # dicom: one series folder per case with a SEG (needs ctstack[dicom])
ISAL_LEVEL = 2  # ISA-L's level 2 compresses as well as zlib's level 1 (gzip_bytes' fallback; ~4x faster than 6)
FOV_PADDING_HU = -3024  # what scanners store outside the reconstruction circle
SCALED_INTER = -1024.0  # stored 0.. with scl_slope 1 / scl_inter -1024, as DICOM-derived NIfTI often are


@dataclass(frozen=True)
class Storage:
    """How one case is written: orientation, integer encoding and field-of-view padding."""

    name: str
    lps: bool  # negative x/y axes, as DICOM converters write
    scaled: bool  # int16 stored = HU + 1024 with scl_slope 1, scl_inter -1024; else int16 HU
    fov_padding: bool  # -3024 HU outside the scanner's circular field of view


STORAGES = (
    Storage("int16 scl_inter=-1024", lps=False, scaled=True, fov_padding=False),
    Storage("LPS int16 scl_inter=-1024, -3024 outside FOV", lps=True, scaled=True, fov_padding=True),
    Storage("int16 HU", lps=False, scaled=False, fov_padding=False),
    Storage("int16 scl_inter=-1024", lps=False, scaled=True, fov_padding=False),
    Storage("LPS int16 HU, -3024 outside FOV", lps=True, scaled=False, fov_padding=True),
)  # cycled over the cases, so any three consecutive cases include an LPS one


@dataclass(frozen=True)
class DemoConfig:
    """Options of a demo set; the same options always give byte-identical files."""

    cases: int = 12  # enough for train/val/test splits and a visible spread of lesion burden
    seed: int = 0
    layout: str = "covid19"  # "covid19": NAME_ct/NAME_seg; "nnunet": imagesTr/labelsTr (+ unlabeled imagesTs)
    size: int = 512  # in-plane matrix, as scanners reconstruct; smaller for quick tests
    max_slices: int | None = None  # cap for quick runs: slices get thicker, the whole chest stays
    workers: int | None = None  # processes; None = one per core (at most one per case), 1 = in-process
    difficulty: str = "easy"  # "realistic": faint soft lesions, look-alikes, artefacts (easy keeps its bytes)
    raters: int = 1  # annotators per labeled case; 1 writes the truth as the one mask (the bytes of before)
    unlabeled: int = 0  # extra scans without masks, numbered after the ``cases`` (0: the set of before)
    format: str = "nifti"  # "dicom": NAME/ series folders with NAME/seg.dcm, real-world quirks (docs/dicom.md)

    def __post_init__(self) -> None:
        _check_range("cases", self.cases, 1, 10_000)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        _check_range("size", self.size, 32, 2048)
        if self.layout not in LAYOUTS:
            raise UsageError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.difficulty not in DIFFICULTIES:
            raise UsageError(f"difficulty {self.difficulty!r}: expected one of {', '.join(DIFFICULTIES)}")
        if self.max_slices is not None:
            _check_range("max_slices", self.max_slices, 4, 10_000)
        if self.workers is not None:
            _check_range("workers", self.workers, 1, 1024)
        _check_range("raters", self.raters, 1, MAX_RATERS)
        _check_range("unlabeled", self.unlabeled, 0, 10_000)
        _check_format(self)

    @property
    def total(self) -> int:
        """Scans written: the ``cases`` and the ``unlabeled`` extras."""
        return self.cases + self.unlabeled


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    """Refuse an option outside lo..hi with a one-line UsageError."""
    if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise UsageError(f"demo option {name}={value!r}: expected an integer in {lo}..{hi}")


def _check_format(cfg: DemoConfig) -> None:
    """A known format; DICOM cases are folders of their own (no nnU-Net layout) with one SEG (one rater)."""
    if cfg.format not in FORMATS:
        raise UsageError(f"format {cfg.format!r}: expected one of {', '.join(FORMATS)}")
    if cfg.format == "dicom" and (cfg.layout != "covid19" or cfg.raters != 1):
        raise UsageError("--format dicom writes one series folder per case with one SEG: drop --layout and "
                         "--raters (or use --format nifti)")


def case_id(index: int) -> str:
    """Name of case ``index`` (zero-padded so that names sort in case order)."""
    return f"demo_{index:03d}"


def unlabeled_count(cfg: DemoConfig) -> int:
    """Cases the nnU-Net layout puts in imagesTs/ without labels: a couple (one per four cases, at most 2)."""
    return min(2, cfg.cases // 4) if cfg.layout == "nnunet" else 0


def case_paths(out_dir: Path, cfg: DemoConfig, index: int) -> tuple[Path, Path | None]:
    """Image and mask file of case ``index`` in the configured layout (DICOM: the series folder and its SEG; mask
    None for unlabeled cases: the nnU-Net
    layout's imagesTs cases, and the ``--unlabeled`` extras, which keep the train names without a mask file)."""
    name = case_id(index)
    extra = index >= cfg.cases
    if cfg.format == "dicom":
        return out_dir / name, None if extra else out_dir / name / "seg.dcm"
    if cfg.layout == "covid19":
        return out_dir / f"{name}_ct.nii.gz", None if extra else out_dir / f"{name}_seg.nii.gz"
    if extra:
        return out_dir / "imagesTr" / f"{name}_0000.nii.gz", None
    if index >= cfg.cases - unlabeled_count(cfg):
        return out_dir / "imagesTs" / f"{name}_0000.nii.gz", None
    return out_dir / "imagesTr" / f"{name}_0000.nii.gz", out_dir / "labelsTr" / f"{name}.nii.gz"


def rater_paths(out_dir: Path, cfg: DemoConfig, index: int) -> list[Path]:
    """The rater mask files of case ``index`` (``--raters`` R > 1): NAME_seg_r1..rR (covid19), labelsTr/NAME_r1..
    (nnunet); [] for one rater (``case_paths``' mask) and for unlabeled cases."""
    image, mask = case_paths(out_dir, cfg, index)
    if cfg.raters == 1 or mask is None:
        return []
    stem = mask.name[: -len(".nii.gz")]
    return [mask.with_name(f"{stem}_r{k}.nii.gz") for k in range(1, cfg.raters + 1)]


def make_demo(out_dir: Path, cfg: DemoConfig) -> pd.DataFrame:
    """Write a demo set to ``out_dir`` and return one row per case (paths, geometry, lesion statistics)."""
    import pandas as pd

    rows = sorted(iter_demo(out_dir, cfg), key=lambda row: row["case_id"])
    return pd.DataFrame(rows)


def iter_demo(out_dir: Path, cfg: DemoConfig) -> Iterator[dict]:
    """Write a demo set case by case (in parallel), yielding each case's row as it completes.

    Raises:
        UsageError: ``out_dir`` is a file, a folder that is not empty (nothing is overwritten), or cannot be
            created.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot create the folder ({err.strerror}); choose a writable path") from err
    workers = min(cfg.workers or os.cpu_count() or 1, cfg.total)
    if workers == 1:
        for index in range(cfg.total):
            yield write_demo_case(out_dir, cfg, index)
    else:
        with process_pool(workers) as pool:  # works from an unguarded script; workers die with this process
            futures = [pool.submit(write_demo_case, out_dir, cfg, index) for index in range(cfg.total)]
            for future in as_completed(futures):
                yield future.result()
    if cfg.layout == "nnunet":
        _write_dataset_json(out_dir, cfg)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a file or a non-empty folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: expected a folder for the demo set, found a file; choose another path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise UsageError(f"{out_dir}: expected an empty or new folder, found existing files; "
                         "choose a new folder or delete this one")


def write_demo_case(out_dir: Path, cfg: DemoConfig, index: int) -> dict:
    """Render case ``index`` and write its image (and mask); return its row."""
    start = time.perf_counter()
    phantom = make_phantom(cfg.seed, index, cfg.size, cfg.max_slices, cfg.difficulty)
    storage = storage_of(cfg.seed, index)
    image_path, mask_path = case_paths(out_dir, cfg, index)
    affine = case_affine(phantom, storage.lps)
    raters = rater_paths(out_dir, cfg, index)
    dice: list[float] = []
    if raters:  # masks first: an interrupted run leaves at worst masks without an image
        masks = rater_masks(phantom, cfg.raters, cfg.seed, index)
        for path, mask in zip(raters, masks):
            _save(path, _orient(mask, storage.lps), affine)
        dice = lesion_dice(phantom.mask, masks)
        mask_path = None
    elif mask_path is not None and cfg.format == "nifti":
        _save(mask_path, _orient(phantom.mask, storage.lps), affine)
    stored, inter = encode_hu(phantom, storage)
    if cfg.format == "dicom":
        _save_dicom(image_path, phantom, storage, affine, (cfg.seed, index), labeled=mask_path is not None)
    else:
        _save(image_path, _orient(stored, storage.lps), affine, inter)
    row = _row(phantom, storage, index, image_path, mask_path, time.perf_counter() - start)
    if cfg.format == "dicom":
        from ctprep.demo.dicom_writer import quirk_of

        row["dicom_quirk"] = quirk_of(index)
    if raters:
        row.update(labeled=True, raters=[str(p) for p in raters], lesion_dice=dice,
                   bytes=row["bytes"] + sum(p.stat().st_size for p in raters))
    return row


def storage_of(seed: int, index: int) -> Storage:
    """How case ``index`` of the set made with ``seed`` is written (the styles cycle over the cases)."""
    return STORAGES[(index + seed) % len(STORAGES)]


def encode_hu(phantom: Phantom, storage: Storage) -> tuple[np.ndarray, float | None]:
    """The int16 array to store and its scl_inter (None for plain HU), with the FOV padding applied."""
    stored = phantom.hu.copy()
    if storage.fov_padding:
        stored[:, _outside_fov(phantom.patient.size)] = FOV_PADDING_HU
    if not storage.scaled:
        return stored, None
    stored -= np.int16(SCALED_INTER)  # HU -1024..3071 -> 0..4095; the FOV padding -3024 -> -2000
    return stored, SCALED_INTER


def _outside_fov(size: int) -> np.ndarray:
    """Pixels outside the inscribed circle of the matrix (the reconstruction field of view)."""
    centre = (size - 1) / 2
    r2 = (np.arange(size)[:, None] - centre) ** 2 + (np.arange(size)[None, :] - centre) ** 2
    return r2 > (size / 2) ** 2


def case_affine(phantom: Phantom, lps: bool) -> np.ndarray:
    """Voxel-to-RAS affine of the written (X, Y, Z) array; LPS flips x and y as DICOM converters do."""
    p = phantom.patient
    half = (p.size - 1) / 2 * p.pixel_mm
    affine = np.diag([p.pixel_mm, p.pixel_mm, p.slice_mm, 1.0])
    affine[:3, 3] = [-half, -half, -p.slice_mm * (p.n_slices - 1) / 2]
    if lps:
        affine[:2, :2] *= -1
        affine[:2, 3] = half
    return affine


def _orient(zyx: np.ndarray, lps: bool) -> np.ndarray:
    """(Z, Y, X) RAS slices -> the (X, Y, Z) array to write (a Fortran-order view, flipped for LPS)."""
    return zyx[:, ::-1, ::-1].T if lps else zyx.T


def _save(path: Path, data: np.ndarray, affine: np.ndarray, inter: float | None = None) -> None:
    """Write a .nii.gz atomically and reproducibly (fixed gzip time stamp, scanner qform/sform)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if inter is not None:
        img.header.set_slope_inter(1.0, inter)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    write_bytes(path, gzip_bytes(img.to_bytes(), ISAL_LEVEL, mtime=0))  # mtime 0: reproducible


def _save_dicom(folder: Path, phantom: Phantom, storage: Storage, affine: np.ndarray, seed_index: tuple[int, int],
                labeled: bool) -> None:
    """Write a case as a DICOM series folder (+ SEG): HU with the storage's FOV padding and intercept, the quirk
    of its index (ctprep.demo.dicom_writer.QUIRKS); built under a hidden name and renamed when complete."""
    from ctprep.demo.dicom_writer import quirk_of, write_demo_series

    hu = phantom.hu.copy()
    if storage.fov_padding:
        hu[:, _outside_fov(phantom.patient.size)] = FOV_PADDING_HU
    seed, index = seed_index
    partial = folder.with_name(f".{folder.name}.partial")  # hidden: discovery skips it until the rename
    write_demo_series(partial, _orient(hu, storage.lps), _orient(phantom.mask, storage.lps) if labeled else None,
                      affine, SCALED_INTER if storage.scaled else 0.0, ("ctstack demo", str(seed), case_id(index)),
                      quirk_of(index))
    os.replace(partial, folder)


def _bytes(path: Path) -> int:
    """Size of a file, or of the files in a (DICOM) folder."""
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def _row(phantom: Phantom, storage: Storage, index: int, image_path: Path, mask_path: Path | None,
         seconds: float) -> dict:
    """The summary row of one written case; slice counts are measured on the mask as written."""
    p = phantom.patient
    lesion_slices = int(phantom.mask.any(axis=(1, 2)).sum())
    visible = phantom.lesion_voxels > 0
    return {
        "case_id": case_id(index), "labeled": mask_path is not None,
        "image": str(image_path), "mask": str(mask_path) if mask_path else None,
        "shape": (p.size, p.size, p.n_slices), "spacing_mm": (p.pixel_mm, p.pixel_mm, p.slice_mm),
        "storage": storage.name, "orientation": "LPS" if storage.lps else "RAS",
        "n_slices": p.n_slices, "n_lesions": int(visible.sum()),
        "lesion_kinds": ",".join(les.kind for les, v in zip(phantom.lesions, visible) if v),
        "lesion_voxels": int(phantom.lesion_voxels.sum()), "lesion_slices": lesion_slices,
        "empty_slices": p.n_slices - lesion_slices, "pct_empty": 100.0 * (p.n_slices - lesion_slices) / p.n_slices,
        "bytes": _bytes(image_path) + (mask_path.stat().st_size if mask_path and not mask_path.is_relative_to(
            image_path) else 0),
        "seconds": seconds,
    }


def _write_dataset_json(out_dir: Path, cfg: DemoConfig) -> None:
    """nnU-Net v2 dataset.json describing the channel, labels and training count."""
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": cfg.cases - unlabeled_count(cfg), "file_ending": ".nii.gz",
            "name": "ctstack demo", "description": f"synthetic chest CT, ctprep demo seed {cfg.seed}"}
    write_text(out_dir / "dataset.json", json.dumps(meta, indent=2) + "\n")


def summary_rows(cases: pd.DataFrame | list[dict], seconds: float) -> list[tuple[str, object]]:
    """Rows of the closing summary: slices, lesion balance (labeled cases), spread, size on disk, time."""
    import pandas as pd

    cases = pd.DataFrame(cases)
    labeled = cases[cases["labeled"]]
    lesion, empty = int(labeled["lesion_slices"].sum()), int(labeled["empty_slices"].sum())
    ratio = f"{empty / lesion:.2f} : 1" if lesion else "no lesion slices"
    spread = (f"{labeled['pct_empty'].min():.0f}-{labeled['pct_empty'].max():.0f} %" if len(labeled) else "-")
    return [
        ("cases", f"{len(cases)} ({len(labeled)} labeled)"),
        ("slices", int(cases["n_slices"].sum())),
        ("lesion slices", lesion),
        ("empty : lesion slices", ratio),
        ("per-patient % empty", spread),
        *_rater_rows(labeled),
        ("size on disk", f"{cases['bytes'].sum() / 2**20:.1f} MiB"),
        ("seconds", f"{seconds:.1f}"),
    ]


def _rater_rows(labeled: pd.DataFrame) -> list[tuple[str, object]]:
    """With ``--raters`` R > 1: raters per case and the inter-rater Dice per lesion (mean, middle 80 %)."""
    if "lesion_dice" not in labeled.columns:
        return []
    dice = np.array([d for ds in labeled["lesion_dice"] for d in ds])
    spread = f"{dice.mean():.2f} (10-90 %: {np.quantile(dice, 0.1):.2f}-{np.quantile(dice, 0.9):.2f})" \
        if dice.size else "no lesions"
    return [("raters per case", len(labeled["raters"].iloc[0])), ("inter-rater Dice per lesion", spread)]
