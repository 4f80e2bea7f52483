"""Test helpers: a numpy HU volume written as a DICOM series (the demo's writer) and as NIfTI, and small edits
of written slices (what real exports get wrong)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need ctstack[dicom] (pydicom)")
pytest.importorskip("highdicom", reason="DICOM tests need ctstack[dicom] (highdicom)")

from ctprep.demo.dicom_writer import SeriesSpec, write_series  # noqa: E402


def write_dicom(folder: Path, hu_xyz: np.ndarray, affine_ras: np.ndarray, **spec) -> list:
    """Write (X, Y, Z) HU with its RAS affine as a CT series in ``folder``; returns the datasets in slice order.

    ``spec`` overrides SeriesSpec fields (series_number, intercept, names, transfer_syntax, ...)."""
    entropy = spec.pop("entropy", ("test", folder.name))
    return write_series(folder, hu_xyz, affine_ras, SeriesSpec(entropy, **spec))


def edit_slices(folder: Path, edit, names: str = "CT*.dcm") -> None:
    """Apply ``edit(dataset, k)`` to the files matching ``names`` (k: their sorted index) and save them back."""
    for k, path in enumerate(sorted(folder.glob(names))):
        ds = pydicom.dcmread(path)
        if edit(ds, k) is not False:
            ds.save_as(path)


def write_rtstruct(path: Path, sources: list, rois: list[tuple[str, str, list[tuple[int, list]]]]) -> None:
    """An RT Structure Set on the series ``sources`` (datasets in slice order). ``rois``: (name, interpreted type,
    [(slice k, [(column, row), ...] polygon in voxel units), ...]); points go to LPS mm through the slices'
    own geometry, so a contour may be placed off its slice by a fractional k."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    first = sources[0]
    origin = np.asarray(first.ImagePositionPatient, float)
    step = (np.asarray(sources[-1].ImagePositionPatient, float) - origin) / (len(sources) - 1)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    cosines = np.asarray(first.ImageOrientationPatient, float)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", first.StudyInstanceUID, pydicom.uid.generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = first.FrameOfReferenceUID, Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = Sequence(), Sequence(), Sequence()
    for number, (name, kind, contours) in enumerate(rois, start=1):
        roi, observation, roi_contour = Dataset(), Dataset(), Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, first.FrameOfReferenceUID
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = kind
        roi_contour.ReferencedROINumber, roi_contour.ContourSequence = number, Sequence()
        for k, polygon in contours:
            xy = np.asarray(polygon, float)
            lps = origin + k * step + xy[:, :1] * col_mm * cosines[:3] + xy[:, 1:] * row_mm * cosines[3:]
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(xy)
            contour.ContourData = [f"{v:.6f}" for v in lps.ravel()]
            roi_contour.ContourSequence.append(contour)
        ds.StructureSetROISequence.append(roi)
        ds.RTROIObservationsSequence.append(observation)
        ds.ROIContourSequence.append(roi_contour)
    ds.save_as(path, enforce_file_format=True)


def box(lo: tuple[float, float], hi: tuple[float, float]) -> list[tuple[float, float]]:
    """A rectangle polygon (column, row) from corner ``lo`` to corner ``hi``."""
    return [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
