"""DICOM series in: pick the CT series of a case folder, check it, sort it along the slice normal, rescale to HU
and build its RAS affine, giving the same volume object as a NIfTI file (``ctprep.nifti.NiftiVolume``).

The rules (docs/dicom.md): localizers and images of another orientation are dropped (a note, not a failure);
the axial CT series with the most slices is read (the others are named in a note; a tie fails); slices are
ordered by ImagePositionPatient projected on the slice normal (never by file name or InstanceNumber); each
slice's RescaleSlope/Intercept gives HU; missing slices, uneven spacing, gantry tilt, mixed sizes and non-CT
series are refused with one line naming the folder. Needs ``ctstack[dicom]`` (pydicom).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ctprep.dicom_files import dicom_files, require_pydicom
from ctprep.errors import CaseError
from ctprep.nifti import MAX_BYTES, MAX_IN_PLANE, MAX_SLICES, NiftiVolume

MISSING_GAP = 1.5  # a gap over 1.5x the median slice spacing means missing slices
UNEVEN_TOLERANCE = 0.1  # any other gap beyond +-10 % of the median spacing is uneven spacing
TILT_TOLERANCE_DEG = 0.5  # slice positions may stray this far from the slice normal (gantry tilt beyond)
ORIENTATION_DECIMALS = 3  # ImageOrientationPatient cosines equal to 3 decimals are one orientation
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient axes (x left, y posterior) -> NIfTI's RAS
CT_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT and Enhanced CT Image Storage
HEADER_DEFER = "64 KB"  # values larger than this (the pixel data) are read only for the chosen series


@dataclass(frozen=True)
class DicomVolume(NiftiVolume):
    """A volume read from a DICOM series: ``path`` is the case folder; slice k is ``instance_uids[k]``."""

    series_uid: str = ""
    frame_of_reference_uid: str = ""
    instance_uids: tuple[str, ...] = ()  # SOPInstanceUID of each slice, in array order (along the normal)
    notes: tuple[str, ...] = ()  # one line per thing dropped or ignored (localizers, other series)
    tilt_shift: tuple[float, float] = (0.0, 0.0)  # (columns, rows) each slice k was shifted by k x this (--allow-tilt)


def read_series(folder: Path, allow_tilt: bool = False) -> DicomVolume:
    """Read the CT series of a DICOM case folder as float32 HU with its RAS affine; CaseError when refused.

    ``allow_tilt``: a gantry-tilted series is resampled onto the orthogonal grid of its slice planes (each slice
    shifted in-plane, linear interpolation; see ``untilt``) instead of refused."""
    return read_series_and_headers(folder, allow_tilt)[0]


def read_series_and_headers(folder: Path, allow_tilt: bool = False) -> tuple[DicomVolume, list]:
    """``read_series``, and the chosen slices' headers in array order (what a DICOM SEG of the volume references;
    their pixel data is not kept)."""
    grid, ordered = _read_grid(Path(folder), allow_tilt)
    data = _pixels(grid.path, ordered)
    if any(grid.tilt_shift):
        data = untilt(data, grid.tilt_shift, fill=float(data.min()))
    for ds in ordered:
        if "PixelData" in ds:
            del ds.PixelData  # the headers outlive the read; the pixels are in ``data``
    return replace(grid, data=data), ordered


def series_grid(folder: Path, allow_tilt: bool = False) -> DicomVolume:
    """The series ``read_series`` would read, headers only: its affine, instance UIDs and tilt, with all-zero
    data of its shape (no pixel data decoded); what a SEG or RTSTRUCT mask is read onto without the image."""
    return _read_grid(Path(folder), allow_tilt)[0]


def _read_grid(folder: Path, allow_tilt: bool) -> tuple[DicomVolume, list]:
    """Pick, check and sort the series (headers only): a DicomVolume with zero data, and its ordered headers."""
    headers, notes = _image_headers(folder)
    series = _pick_series(folder, headers, notes)
    series = _drop_other_orientations(folder, series, notes)
    _check_sizes(folder, series)
    ordered, positions = _sort_along_normal(folder, series, allow_tilt)
    affine = _affine(folder, ordered[0], positions)
    shift = (0.0, 0.0)
    if allow_tilt and _tilt_degrees(affine) > TILT_TOLERANCE_DEG:
        notes.append(f"{folder}: gantry tilt of {_tilt_degrees(affine):.2f} deg resampled onto an orthogonal "
                     "grid (--allow-tilt)")
        affine, shift = _orthogonal(affine)
    shape = (int(ordered[0].Columns), int(ordered[0].Rows), len(ordered))
    grid = DicomVolume(data=np.broadcast_to(np.float32(0), shape), affine=affine, path=folder, tilt_shift=shift,
                       series_uid=str(ordered[0].SeriesInstanceUID),
                       frame_of_reference_uid=str(ordered[0].get("FrameOfReferenceUID", "")),
                       instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered), notes=tuple(notes))
    return grid, ordered


def _image_headers(folder: Path) -> tuple[list, list[str]]:
    """Headers (pixel data deferred) of the folder's image files, localizers dropped (and noted)."""
    pydicom = require_pydicom()
    headers, localizers = [], 0
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, defer_size=HEADER_DEFER)
        except Exception as err:  # pydicom raises many types for damaged files
            raise CaseError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err}); re-export the "
                            "series") from err
        if "PixelData" not in ds or "ImagePositionPatient" not in ds:
            if str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "")) in CT_CLASSES:
                raise CaseError(f"{path}: expected a CT slice with pixel data and ImagePositionPatient, found "
                                "neither (a truncated file?); re-export the series")
            continue  # SEG, RTSTRUCT, SR, presentation states: not slices of a volume
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            localizers += 1
            continue
        headers.append(ds)
    notes = [f"{folder}: dropped {localizers} localizer image(s)"] if localizers else []
    if not headers:
        raise CaseError(f"{folder}: expected a DICOM image series, found no image slices; put the CT series' "
                        "files in this folder")
    return headers, notes


def _pick_series(folder: Path, headers: list, notes: list[str]) -> list:
    """The axial CT series with the most slices; the others are noted; a tie or no CT series fails."""
    groups: dict[str, list] = {}
    for ds in headers:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    ct = {uid: group for uid, group in groups.items() if str(group[0].get("Modality", "")).upper() == "CT"}
    if not ct:
        found = ", ".join(sorted({str(ds.get("Modality", "?")) for ds in headers}))
        raise CaseError(f"{folder}: expected a CT series, found modality {found}; ctstack reads chest CT only")
    axial = {uid: group for uid, group in ct.items() if _is_axial(_main_orientation(group))}
    if not axial:
        raise CaseError(f"{folder}: expected an axial CT series, found only {_describe(ct)}; export the axial "
                        "reconstruction")
    most = max(len(group) for group in axial.values())
    best = [uid for uid, group in axial.items() if len(group) == most]
    if len(best) > 1:
        raise CaseError(f"{folder}: ambiguous: {len(best)} axial CT series with {most} slices "
                        f"({_describe({uid: axial[uid] for uid in best})}); keep one series in the folder")
    others = {uid: group for uid, group in groups.items() if uid != best[0]}
    if others:
        notes.append(f"{folder}: read series {_describe({best[0]: axial[best[0]]})}; ignored {_describe(others)}")
    return axial[best[0]]


def _describe(groups: dict[str, list]) -> str:
    """'"desc" (CT, 40 images, uid …)' for each series, for notes and errors."""
    parts = []
    for uid, group in groups.items():
        first = group[0]
        desc = str(first.get("SeriesDescription", "")) or f"series {first.get('SeriesNumber', '?')}"
        parts.append(f"{desc!r} ({first.get('Modality', '?')}, {len(group)} images, {uid})")
    return "; ".join(parts)


def _orientation(ds) -> tuple[float, ...]:
    """ImageOrientationPatient rounded to ORIENTATION_DECIMALS (a key for grouping)."""
    return tuple(round(float(v), ORIENTATION_DECIMALS) + 0.0 for v in ds.ImageOrientationPatient)


def _main_orientation(group: list) -> tuple[float, ...]:
    """The orientation most slices of a series share."""
    return Counter(_orientation(ds) for ds in group).most_common(1)[0][0]


def _is_axial(orientation: tuple[float, ...]) -> bool:
    """Whether the slice normal points mostly head-feet (z)."""
    normal = np.cross(orientation[:3], orientation[3:])
    return int(np.argmax(np.abs(normal))) == 2


def _drop_other_orientations(folder: Path, series: list, notes: list[str]) -> list:
    """Keep the slices of the series' main orientation; others (scouts filed in the series) are noted."""
    main = _main_orientation(series)
    kept = [ds for ds in series if _orientation(ds) == main]
    if len(kept) < len(series):
        notes.append(f"{folder}: dropped {len(series) - len(kept)} image(s) of another orientation than the "
                     "series (localizers)")
    if len(kept) < 2:
        raise CaseError(f"{folder}: expected a series of at least 2 slices, found {len(kept)}; export the "
                        "whole CT series")
    return kept


def _check_sizes(folder: Path, series: list) -> None:
    """One matrix size, single-frame grey slices, and sane sizes before any allocation."""
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for ds in series)
    if len(sizes) > 1:
        found = ", ".join(f"{r}x{c} ({n} slices)" for (r, c), n in sizes.items())
        raise CaseError(f"{folder}: mixed slice sizes {found}; expected one Rows x Columns in a series")
    frames = {int(ds.get("NumberOfFrames", 1) or 1) for ds in series}
    samples = {int(ds.get("SamplesPerPixel", 1)) for ds in series}
    if frames != {1} or samples != {1}:
        raise CaseError(f"{folder}: expected single-frame greyscale CT slices, found {max(frames)} frame(s) and "
                        f"{max(samples)} sample(s) per pixel; export as classic single-frame CT")
    (rows, cols), = sizes
    n_bytes = 4 * rows * cols * len(series)
    if max(rows, cols) > MAX_IN_PLANE or len(series) > MAX_SLICES or n_bytes > MAX_BYTES:
        raise CaseError(f"{folder}: series of {len(series)} slices of {rows}x{cols} is too large; expected at "
                        f"most {MAX_IN_PLANE} in-plane, {MAX_SLICES} slices and {MAX_BYTES // 1024**3} GiB")


def _sort_along_normal(folder: Path, series: list, allow_tilt: bool = False) -> tuple[list, np.ndarray]:
    """Slices sorted by position along the slice normal, with their (n, 3) LPS positions; spacing and tilt
    checked (missing slices, duplicates, uneven spacing, gantry tilt unless ``allow_tilt``)."""
    cosines = np.asarray(series[0].ImageOrientationPatient, dtype=np.float64)
    row, col = cosines[:3], cosines[3:]
    if abs(float(row @ col)) > 1e-3:
        raise CaseError(f"{folder}: ImageOrientationPatient rows and columns are not orthogonal "
                        f"({cosines.tolist()}); fix the series' headers")
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered, positions, along = [series[i] for i in order], positions[order], along[order]
    _check_spacing(folder, np.diff(along))
    if not allow_tilt:
        _check_tilt(folder, positions, normal)
    return ordered, positions


def _check_spacing(folder: Path, gaps: np.ndarray) -> None:
    """Refuse duplicate positions, missing slices and uneven spacing (tolerances in docs/dicom.md)."""
    median = float(np.median(gaps))
    if float(gaps.min()) < 1e-3 or median < 1e-3:
        raise CaseError(f"{folder}: expected one slice per position, found slices at the same position; "
                        "remove the duplicate images")
    worst = int(np.argmax(gaps))
    if gaps[worst] > MISSING_GAP * median:
        raise CaseError(f"{folder}: missing slices: a gap of {gaps[worst]:.3g} mm after slice {worst} "
                        f"(median spacing {median:.3g} mm, limit {MISSING_GAP}x); export the complete series")
    off = np.abs(gaps - median) / median
    if off.max() > UNEVEN_TOLERANCE:
        bad = int(np.argmax(off))
        raise CaseError(f"{folder}: uneven slice spacing: {gaps[bad]:.3g} mm after slice {bad} against a median "
                        f"of {median:.3g} mm (tolerance {UNEVEN_TOLERANCE:.0%}); resample to even spacing first")


def _check_tilt(folder: Path, positions: np.ndarray, normal: np.ndarray) -> None:
    """Refuse a series whose slices are not stacked along their normal (gantry tilt)."""
    step = positions[-1] - positions[0]
    cosine = float(step @ normal) / float(np.linalg.norm(step))
    angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    if angle > TILT_TOLERANCE_DEG:
        raise CaseError(f"{folder}: gantry tilt: slices step {angle:.2f} deg off their normal (tolerance "
                        f"{TILT_TOLERANCE_DEG} deg); convert with --allow-tilt to resample, or reconstruct "
                        "without tilt")


def _tilt_degrees(affine: np.ndarray) -> float:
    """Angle between the slice axis (the step from slice to slice) and the slice normal."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    step = affine[:3, 2]
    cosine = abs(float(step @ normal)) / float(np.linalg.norm(step) * np.linalg.norm(normal))
    return float(np.degrees(np.arccos(min(cosine, 1.0))))


def _orthogonal(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The affine with its slice axis replaced by the step's component along the normal, and the in-plane shift
    (columns, rows) per slice that maps the tilted voxels onto it."""
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal)
    step = affine[:3, 2]
    along = float(step @ normal) * normal
    in_plane = np.linalg.lstsq(affine[:3, :2], step - along, rcond=None)[0]  # the shear in (column, row) voxels
    orthogonal = affine.copy()
    orthogonal[:3, 2] = along
    return orthogonal, (float(in_plane[0]), float(in_plane[1]))


def untilt(volume: np.ndarray, shift: tuple[float, float], fill: float, order: int = 1) -> np.ndarray:
    """Shift slice k of an (X, Y, Z) volume in-plane by k x ``shift`` voxels (spline ``order``; ``fill`` outside),
    so a tilted stack lines up on the orthogonal grid of ``_orthogonal``."""
    from scipy import ndimage

    out = np.empty_like(volume)
    for k in range(volume.shape[2]):
        ndimage.shift(volume[:, :, k], (k * shift[0], k * shift[1]), output=out[:, :, k], order=order,
                      mode="constant", cval=fill)
    return out


def _affine(folder: Path, first, positions: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS mm, from ImageOrientationPatient, PixelSpacing and the positions."""
    cosines = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    try:
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    except (AttributeError, TypeError, ValueError) as err:
        raise CaseError(f"{folder}: expected PixelSpacing (two positive numbers), found "
                        f"{first.get('PixelSpacing')}; fix the series' headers") from err
    if not (row_mm > 0 and col_mm > 0):
        raise CaseError(f"{folder}: expected positive PixelSpacing, found {[row_mm, col_mm]}; fix the headers")
    lps = np.eye(4)
    lps[:3, 0] = cosines[:3] * col_mm  # along a row: the column index grows
    lps[:3, 1] = cosines[3:] * row_mm  # down a column: the row index grows
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def _pixels(folder: Path, ordered: list) -> np.ndarray:
    """(columns, rows, slices) float32 HU, each slice rescaled by its own slope and intercept."""
    rows, cols = int(ordered[0].Rows), int(ordered[0].Columns)
    planes = np.empty((len(ordered), rows, cols), np.float32)
    for k, ds in enumerate(ordered):
        try:
            stored = ds.pixel_array
        except Exception as err:  # missing decoder plugin, truncated pixel data
            raise CaseError(f"{ds.filename}: cannot decode the pixel data ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); for compressed transfer syntaxes "
                            "pip install 'ctstack[dicom]'") from err
        np.multiply(stored, np.float32(ds.get("RescaleSlope", 1) or 1), out=planes[k], casting="unsafe")
        planes[k] += np.float32(ds.get("RescaleIntercept", 0) or 0)
    return planes.transpose(2, 1, 0)  # Fortran-ordered (X, Y, Z), as NIfTI data is read
