"""Predictions out as DICOM SEG (highdicom): one segment "lesion" on the source series' own slices, binary or
fractional, referencing the series (study, series and SOP instance UIDs, frame of reference), so the mask opens
over the scan in a PACS, OHIF or 3D Slicer. Needs ``ctstack[dicom]``. Rules in docs/dicom.md."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctprep import __version__
from ctprep.atomic import write_bytes
from ctprep.dicom import DicomVolume, untilt
from ctprep.dicom_files import require_highdicom
from ctprep.errors import CaseError

SERIES_NUMBER = 900  # the SEG's series number (viewers list it after the scanner's series)
MAX_FRACTIONAL = 255  # a fractional SEG stores probability p as round(255 p) in 8 bits
FRACTIONAL_SYNTAX = "1.2.840.10008.1.2.5"  # RLE Lossless: 10x smaller fractional frames (docs/benchmarks.md)
BINARY_SYNTAX = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian: binary frames are already bit-packed
SEGMENT_LABEL = "lesion"
CONTENT_LABEL = "LESION"  # the SEG's ContentLabel (code string: upper case, at most 16 characters)
REQUIRED = ("StudyInstanceUID", "FrameOfReferenceUID")  # a SEG without them cannot be placed over the series
EMPTY_ALLOWED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                 "AccessionNumber")  # Type 2 (may be empty): anonymisers often delete them; highdicom copies them


@dataclass(frozen=True)
class SegAuthor:
    """Who made the prediction, written into the SEG: the run folder's name and the checkpoint."""

    run: str = "ctstack"
    checkpoint: str = "best"
    threshold: float = 0.5


def prediction_seg(volume: DicomVolume, headers: list, data: np.ndarray, fractional: bool,
                   author: SegAuthor = SegAuthor()):
    """A highdicom Segmentation of ``data`` ((X, Y, Z) on ``volume``'s grid: a 0/1 mask, or probabilities when
    ``fractional``) over the source slices ``headers`` (array order). A series resampled by ``--allow-tilt`` is
    mapped back onto its tilted slices first."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    headers = complete_headers(volume, headers)
    on_slices = source_slices(np.asarray(data), volume, fractional)
    frames = np.ascontiguousarray(on_slices.transpose(2, 1, 0))  # (slices, rows, columns), as the headers
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ctstack", version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters={"run": author.run, "checkpoint": author.checkpoint, "threshold": f"{author.threshold:g}"})
    lesion = hd.seg.SegmentDescription(
        segment_number=1, segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    try:
        return _segmentation(hd, headers, frames, kind, lesion, author)
    except (ValueError, AttributeError, TypeError, KeyError) as err:  # highdicom's checks of the source headers
        raise CaseError(f"{volume.path}: cannot build a DICOM SEG over this series ({type(err).__name__}: {err}); "
                        "fix the series' headers, or predict with --format nifti") from err


def _segmentation(hd, headers: list, frames: np.ndarray, kind, lesion, author: SegAuthor):
    """highdicom's Segmentation of ``frames`` over ``headers`` with ctstack's series and equipment attributes."""
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=frames, segmentation_type=kind, segment_descriptions=[lesion],
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="ctstack", manufacturer_model_name="ctmodel", software_versions=__version__,
        device_serial_number=author.run[:64] or "ctstack", content_label=CONTENT_LABEL,
        content_description=f"ctstack {author.run} ({author.checkpoint})"[:64],
        series_description="ctstack lesion", max_fractional_value=MAX_FRACTIONAL,
        transfer_syntax_uid=FRACTIONAL_SYNTAX if kind.value == "FRACTIONAL" else BINARY_SYNTAX,
        omit_empty_frames=bool(frames.any()))  # an all-empty SEG keeps its frames: one must exist


def complete_headers(volume: DicomVolume, headers: list) -> list:
    """The headers with what a SEG needs and anonymisers delete filled in: empty Type 2 patient and study
    attributes, SliceThickness as the slice spacing; CaseError when the study or frame of reference UID is
    missing (they place the SEG over the series)."""
    first = headers[0]
    missing = [keyword for keyword in REQUIRED if not str(first.get(keyword, "") or "")]
    if missing:
        raise CaseError(f"{volume.path}: expected {' and '.join(missing)} in the series' headers for a DICOM SEG, "
                        "found none; restore them, or predict with --format nifti")
    spacing = float(np.linalg.norm(np.asarray(volume.affine)[:3, 2]))
    for ds in headers:
        for keyword in EMPTY_ALLOWED:
            if keyword not in ds:
                setattr(ds, keyword, "")
        if not ds.get("SliceThickness"):
            ds.SliceThickness = f"{spacing:.6g}"
    return headers


def source_slices(data: np.ndarray, volume: DicomVolume, fractional: bool) -> np.ndarray:
    """``data`` on the series' own slices: unchanged, or shifted back by the tilt ``--allow-tilt`` removed
    (linear; a mask is thresholded at one half again). Probabilities as float32 in [0, 1], masks as uint8."""
    if any(volume.tilt_shift):
        back = (-volume.tilt_shift[0], -volume.tilt_shift[1])
        data = untilt(data.astype(np.float32), back, fill=0.0)
        data = data if fractional else data >= 0.5
    if fractional:
        return np.clip(data, 0.0, 1.0).astype(np.float32)
    return (data != 0).astype(np.uint8)


def write_seg(seg, destination: Path) -> None:
    """Save ``seg`` to ``destination`` atomically (temp file beside it, fsync, rename): never half-written."""
    buffer = io.BytesIO()
    seg.save_as(buffer)
    write_bytes(Path(destination), buffer.getvalue())
