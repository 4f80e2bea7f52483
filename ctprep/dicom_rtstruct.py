"""RTSTRUCT masks in: the closed planar contours of a structure set rasterised on the grid of the series
``ctprep.dicom`` read, as a boolean (X, Y, Z) mask. Needs ``ctstack[dicom]`` (pydicom).

Rules (docs/dicom.md): every ROI is joined except those interpreted as EXTERNAL or ORGAN (body outline, lungs);
a voxel is inside when its centre is inside the contours of its slice by the even-odd rule (so a contour
drawn inside another is a hole); a contour must lie on a slice (within SLICE_TOLERANCE of one).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctprep.dicom import LPS_TO_RAS, DicomVolume
from ctprep.dicom_files import require_pydicom
from ctprep.errors import CaseError

NOT_LESION = {"EXTERNAL", "ORGAN"}  # RTROIInterpretedType of ROIs left out of the mask
SLICE_TOLERANCE = 0.25  # a contour's points must lie within 0.25 slice spacings of a slice


def read_rtstruct_mask(path: Path, image: DicomVolume) -> np.ndarray:
    """The union of an RTSTRUCT's lesion ROIs rasterised on ``image``'s voxels as bool (X, Y, Z)."""
    pydicom = require_pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises many types for damaged files
        raise CaseError(f"{path}: unreadable RTSTRUCT ({type(err).__name__}: {err}); re-export the mask") from err
    _check_reference(path, ds, image)
    to_voxel = np.linalg.inv(LPS_TO_RAS @ image.affine)  # LPS mm -> (column, row, slice)
    mask = np.zeros(image.data.shape, bool)
    for slice_index, points in _contours(path, ds, to_voxel, image.data.shape[2]):
        mask[:, :, slice_index] ^= _inside(points, mask.shape[:2])
    return mask


def _check_reference(path: Path, ds, image: DicomVolume) -> None:
    """The structure set must reference the series read (or, without series references, its frame of reference)."""
    series, frames = set(), set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.add(str(frame.get("FrameOfReferenceUID", "")))
        for study in frame.get("RTReferencedStudySequence", []):
            series.update(str(item.SeriesInstanceUID) for item in study.get("RTReferencedSeriesSequence", []))
    if image.series_uid in series or (not series and image.frame_of_reference_uid in frames):
        return
    raise CaseError(f"{path}: RTSTRUCT references series {', '.join(sorted(series)) or 'none'}, expected the "
                    f"series read from {image.path} ({image.series_uid}); export the structures on that series")


def _contours(path: Path, ds, to_voxel: np.ndarray, n_slices: int):
    """(slice index, (m, 2) column/row points) of every closed planar contour of the lesion ROIs."""
    kinds = {int(obs.ReferencedROINumber): str(obs.get("RTROIInterpretedType", "")).upper()
             for obs in ds.get("RTROIObservationsSequence", [])}
    for roi in ds.get("ROIContourSequence", []):
        if kinds.get(int(roi.ReferencedROINumber), "") in NOT_LESION:
            continue
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue  # points and open polylines enclose nothing
            lps = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            voxels = lps @ to_voxel[:3, :3].T + to_voxel[:3, 3]
            k = float(np.median(voxels[:, 2]))
            if abs(k - round(k)) > SLICE_TOLERANCE or np.ptp(voxels[:, 2]) > 2 * SLICE_TOLERANCE:
                raise CaseError(f"{path}: a contour of ROI {int(roi.ReferencedROINumber)} lies between slices "
                                f"(slice position {k:.2f}); export the structures on the image's slices")
            if 0 <= round(k) < n_slices:
                yield int(round(k)), voxels[:, :2]


def _inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres of a (columns, rows) plane inside a polygon, by even-odd scanlines (one per row)."""
    inside = np.zeros(shape, bool)
    x1, y1 = points[:, 0], points[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    columns = np.arange(shape[0])
    first, last = max(int(np.floor(y1.min())), 0), min(int(np.ceil(y1.max())), shape[1] - 1)
    for row in range(first, last + 1):
        crossing = (y1 > row) != (y2 > row)  # edges a horizontal ray through the row's centres crosses
        xs = np.sort(x1[crossing] + (row - y1[crossing]) * (x2 - x1)[crossing] / (y2 - y1)[crossing])
        right = len(xs) - np.searchsorted(xs, columns, side="right")  # crossings right of each centre
        inside[:, row] = right % 2 == 1
    return inside
