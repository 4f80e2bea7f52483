"""DICOM out for the demo (and the tests): a volume with its RAS affine as a classic CT series, a binary mask as
a DICOM SEG referencing it (highdicom), a localizer, the quirks of real exports. Needs ``ctstack[dicom]``.

Every UID comes from ``generate_uid(entropy_srcs=...)`` (pydicom's root prefix, a SHA-512 of fixed text), so the
same entropy (the demo's seed and case) always gives the same files. ``prefix=None`` would not do: pydicom
3.0.2 then returns a random UUID-derived UID and ignores the entropy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctprep.dicom_files import require_highdicom, require_pydicom

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
STUDY_DATE, STUDY_TIME = "20200101", "120000"  # fixed: reproducible files


@dataclass(frozen=True)
class SeriesSpec:
    """How one series is written: its UIDs' entropy, numbering, file names, rescale and transfer syntax."""

    entropy: tuple[str, ...]  # e.g. ("ctstack demo", seed, case): the study's and frame of reference's UIDs
    series_number: int = 2
    description: str = "axial"
    intercept: float = 0.0  # RescaleIntercept: stored = HU - intercept (slope 1)
    names: str = "ordered"  # "ordered": CT0001.dcm.. by position; "shuffled": UID names, no suffix, random order
    transfer_syntax: str | None = None  # None: Explicit VR Little Endian; else a pydicom compressed syntax UID
    patient_id: str = "DEMO"
    prefix: str = "CT"  # "ordered" names: PREFIX0001.dcm, ...


def uid(*entropy: object) -> str:
    """A deterministic UID from the given entropy (pydicom's root prefix + a hash; see the module docstring)."""
    pydicom = require_pydicom()
    return str(pydicom.uid.generate_uid(entropy_srcs=["/".join(str(part) for part in entropy)]))


def write_series(folder: Path, hu_xyz: np.ndarray, affine_ras: np.ndarray, spec: SeriesSpec) -> list:
    """Write an (X, Y, Z) HU volume with its voxel->RAS affine as one DICOM CT file per slice in ``folder``;
    returns the datasets in slice order (for a SEG's source images)."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = RAS_TO_LPS @ np.asarray(affine_ras, dtype=np.float64)
    n_slices = hu_xyz.shape[2]
    datasets = [_slice(hu_xyz[:, :, k].T, lps, k, spec) for k in range(n_slices)]
    for ds, name in zip(datasets, _file_names(datasets, spec)):
        ds.save_as(folder / name, enforce_file_format=True)
    return datasets


def _file_names(datasets: list, spec: SeriesSpec) -> list[str]:
    """Files in position order, or (shuffled) named by UID without a suffix so that names tell nothing."""
    if spec.names == "shuffled":
        return [str(ds.SOPInstanceUID) for ds in datasets]
    return [f"{spec.prefix}{k + 1:04d}.dcm" for k in range(len(datasets))]


def _slice(pixels: np.ndarray, lps: np.ndarray, k: int, spec: SeriesSpec):
    """One CT slice dataset: (rows, cols) HU -> int16 stored values with the position of slice ``k``."""
    ds = _ct_base(spec, series_uid(spec), k)
    col_mm, row_mm = (float(np.linalg.norm(lps[:3, axis])) for axis in (0, 1))
    ds.ImageOrientationPatient = [*_ds(lps[:3, 0] / col_mm), *_ds(lps[:3, 1] / row_mm)]
    ds.ImagePositionPatient = _ds(lps[:3, 3] + k * lps[:3, 2])
    ds.PixelSpacing = _ds([row_mm, col_mm])
    ds.SliceThickness = _ds([np.linalg.norm(lps[:3, 2])])[0]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds([spec.intercept])[0], "1", "HU"
    stored = np.rint(np.asarray(pixels, dtype=np.float64) - spec.intercept).astype(np.int16)
    _set_pixels(ds, stored, spec.transfer_syntax)
    return ds


def series_uid(spec: SeriesSpec) -> str:
    """The SeriesInstanceUID of a spec's series."""
    return uid(*spec.entropy, "series", spec.series_number)


def _ct_base(spec: SeriesSpec, series: str, k: int, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")):
    """A CT Image dataset with patient, study, series and instance modules filled (no geometry, no pixels)."""
    pydicom = require_pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(series, "instance", k)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Demo^Patient", spec.patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyID = uid(*spec.entropy, "study"), "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = STUDY_TIME
    ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    ds.Modality, ds.Manufacturer = "CT", "ctstack demo"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, spec.series_number, spec.description
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uid(*spec.entropy, "frame"), ""
    ds.InstanceNumber, ds.ImageType = k + 1, list(image_type)
    ds.KVP = "120"
    return ds


def _set_pixels(ds, stored: np.ndarray, transfer_syntax: str | None) -> None:
    """Signed 16-bit greyscale pixel data, compressed with ``transfer_syntax`` when given."""
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, encoding_plugin="")


def write_localizer(folder: Path, size: int, pixel_mm: float, spec: SeriesSpec) -> None:
    """A one-image coronal localizer (ImageType LOCALIZER, series 1) in the case folder, as scanners export."""
    pydicom = require_pydicom()
    scout = SeriesSpec(spec.entropy, 1, "topogram", 0.0, spec.names, None, spec.patient_id, "SCOUT")
    ds = _ct_base(scout, series_uid(scout), 0, ("ORIGINAL", "PRIMARY", "LOCALIZER"))
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 0, -1], _ds([-size * pixel_mm / 2, 0, 0])
    ds.PixelSpacing, ds.SliceThickness = _ds([pixel_mm, pixel_mm]), "1"
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ramp = np.linspace(-1000, 200, size * size).reshape(size, size).astype(np.int16)
    _set_pixels(ds, ramp, None)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(folder / "scout.dcm", enforce_file_format=True)


def write_seg(path: Path, mask_xyz: np.ndarray, sources: list, spec: SeriesSpec) -> None:
    """A binary DICOM SEG of an (X, Y, Z) mask on the grid of ``sources`` (the series' datasets in slice order):
    one segment "lesion", frames referencing the source instances."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    lesion = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    frames = np.ascontiguousarray(np.asarray(mask_xyz, dtype=bool).transpose(2, 1, 0))  # (Z, rows, cols)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[lesion], series_instance_uid=uid(*spec.entropy, "seg series"), series_number=100,
        sop_instance_uid=uid(*spec.entropy, "seg instance"), instance_number=1, manufacturer="ctstack demo",
        manufacturer_model_name="ctprep demo", software_versions="0.1.0", device_serial_number="0",
        content_label="LESION", content_creator_name="Demo^Truth", omit_empty_frames=bool(frames.any()))
    _fix_stamps(seg, uid(*spec.entropy, "seg dimensions"))
    seg.save_as(path)


def _fix_stamps(seg, dimension_uid: str) -> None:
    """Replace what highdicom stamps from the clock or a random UID, so that the SEG's bytes are reproducible."""
    seg.SeriesDate = seg.ContentDate = seg.InstanceCreationDate = STUDY_DATE
    seg.SeriesTime = seg.ContentTime = seg.InstanceCreationTime = STUDY_TIME
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = STUDY_DATE + STUDY_TIME
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = dimension_uid


def _ds(values) -> list[str]:
    """Decimal strings of at most 16 characters (the DS value representation), exact to ~1e-10 mm."""
    return [_decimal(float(v)) for v in np.ravel(values)]


def _decimal(value: float) -> str:
    """The shortest repr of ``value`` that fits DS's 16 characters."""
    text = repr(value + 0.0)
    for digits in range(15, 5, -1):
        if len(text) <= 16:
            return text
        text = f"{value:.{digits}g}"
    return text


QUIRKS = ("plain", "shuffled names", "localizer", "two series")  # cycled over the demo's cases


def quirk_of(index: int) -> str:
    """The real-world quirk case ``index`` of a DICOM demo set is written with (cycled; docs/dicom.md)."""
    return QUIRKS[index % len(QUIRKS)]


def write_demo_series(folder: Path, hu_xyz: np.ndarray, mask_xyz: np.ndarray | None, affine: np.ndarray,
                      intercept: float, entropy: tuple[str, ...], quirk: str) -> None:
    """One demo case as a DICOM folder: the series (``quirk``: shuffled names, a localizer, or a second,
    thicker reconstruction with half the slices), then its SEG when ``mask_xyz`` is given."""
    spec = SeriesSpec(entropy, intercept=intercept, names="shuffled" if quirk == "shuffled names" else "ordered",
                      patient_id=str(entropy[-1]))
    sources = write_series(folder, hu_xyz, affine, spec)
    if quirk == "localizer":
        write_localizer(folder, hu_xyz.shape[0], float(np.linalg.norm(affine[:3, 0])), spec)
    if quirk == "two series":
        thick_affine = affine.copy()
        thick_affine[:3, 2] *= 2
        thick = SeriesSpec(entropy, 3, "axial thick (every 2nd slice)", intercept, "ordered", None, spec.patient_id,
                           "THICK")
        write_series(folder, hu_xyz[:, :, ::2], thick_affine, thick)
    if mask_xyz is not None:
        write_seg(folder / "seg.dcm", mask_xyz, sources, spec)
