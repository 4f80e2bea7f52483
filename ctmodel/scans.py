"""What `ctmodel predict` reads and writes: NIfTI files and DICOM series folders in; a NIfTI mask (or
probabilities) or a DICOM SEG out. Rules in docs/dicom.md ("Predictions as DICOM SEG")."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmodel.dicom_seg import SegAuthor
from ctprep.dicom_files import MASK_CLASSES, dicom_files, is_dicom_file, sop_class
from ctprep.discover import CT_CHANNEL, hidden_below, image_channel, nifti_stem
from ctprep.errors import CaseError, UsageError
from ctprep.nifti import NiftiVolume, read_volume, write_like, write_with_affine

FORMATS = ("nifti", "dicom-seg")
SEG_SUFFIX = ".dcm"
NIFTI_SUFFIX = ".nii.gz"  # a DICOM series predicted as NIfTI


@dataclass(frozen=True)
class OutputFormat:
    """How predictions are written: the file format, probabilities or a mask, and (DICOM) tilt and authorship."""

    format: str = "nifti"  # nifti | dicom-seg
    probabilities: bool = False  # NIfTI: float32 probabilities; DICOM SEG: a FRACTIONAL segmentation
    allow_tilt: bool = False  # DICOM input: resample a gantry-tilted series (the SEG maps back onto its slices)
    author: SegAuthor = field(default_factory=SegAuthor)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format}: expected one of {', '.join(FORMATS)}")


def is_series_folder(path: Path) -> bool:
    """Whether ``path`` holds DICOM image files directly (a series folder, as `ctprep convert` reads it; a folder
    of SEG files alone is not one)."""
    return Path(path).is_dir() and any(sop_class(file) not in MASK_CLASSES for file in dicom_files(path))


def scans_in(folder: Path) -> list[Path]:
    """The scans of an INPUT folder: the folder itself when it is a DICOM series folder, else its NIfTI files
    and the DICOM series folders at any depth below it (hidden folders skipped)."""
    folder = Path(folder)
    if is_series_folder(folder):
        return [folder]
    niftis = [p for p in sorted(folder.iterdir()) if p.is_file() and nifti_stem(p) is not None]
    below = [p for p in sorted(folder.rglob("*")) if p.is_dir() and not hidden_below(p, folder)
             and is_series_folder(p)]
    return niftis + below


def output_name(scan: Path, fmt: str = "nifti") -> str:
    """Output file name of a scan: nnU-Net's ``NAME_0000.nii.gz`` -> ``NAME.nii.gz`` (else unchanged); a DICOM
    series folder NAME -> ``NAME.dcm`` (dicom-seg) or ``NAME.nii.gz`` (nifti)."""
    scan = Path(scan)
    stem = nifti_stem(scan)
    if stem is None:
        return scan.name + (SEG_SUFFIX if fmt == "dicom-seg" else NIFTI_SUFFIX)
    name, channel = image_channel(stem)
    return (name if channel == CT_CHANNEL else stem) + scan.name[len(stem):]


def is_output_file(path: Path, fmt: str) -> bool:
    """Whether OUTPUT names a file of the format (``.dcm`` for dicom-seg, ``.nii``/``.nii.gz`` for nifti)."""
    if fmt == "dicom-seg":
        return Path(path).suffix.lower() == SEG_SUFFIX
    return nifti_stem(Path(path)) is not None


def check_output_path(output: Path, fmt: str) -> None:
    """Refuse an OUTPUT named for the other format (``x.nii.gz`` with dicom-seg, ``x.dcm`` with nifti) and an
    existing file that is not of the format: either would be taken for a folder to create."""
    other = "nifti" if fmt == "dicom-seg" else "dicom-seg"
    if is_output_file(output, other):
        wanted = "a .dcm file" if fmt == "dicom-seg" else "a .nii or .nii.gz file"
        raise UsageError(f"{output}: a {other} file name, but --format {fmt} writes {wanted}; rename OUTPUT or "
                         f"pass --format {other}")
    if output.exists() and not output.is_dir() and not is_output_file(output, fmt):
        raise UsageError(f"{output}: expected an OUTPUT folder or a {fmt} file, found another file; choose another "
                         "OUTPUT")


def check_sources(scans: list[Path], fmt: str) -> None:
    """Refuse one DICOM file as INPUT (a scan is its series folder) and a NIfTI input for ``dicom-seg`` (a SEG
    references a DICOM series)."""
    for scan in scans:
        if not scan.is_dir() and is_dicom_file(scan):
            raise UsageError(f"{scan}: one DICOM file, expected a scan; pass its series folder {scan.parent} as INPUT")
    files = [scan for scan in scans if not scan.is_dir()]
    if fmt == "dicom-seg" and files:
        kind = "a NIfTI file" if nifti_stem(files[0]) is not None else "a file"
        raise UsageError(f"{files[0]}: --format dicom-seg needs DICOM series folders as INPUT, found {kind} (a SEG "
                         "references the source series); use --format nifti")


def check_outside_series(pairs: list[tuple[Path, Path]]) -> None:
    """Refuse an output inside a DICOM input's series folder: `ctprep convert` would take it for the case's mask."""
    for src, dst in pairs:
        if src.is_dir() and dst.resolve().is_relative_to(src.resolve()):
            raise UsageError(f"{dst}: expected an output outside the DICOM series folder {src} (ctprep convert "
                             "would read it as the case's mask); choose another OUTPUT")


def read_scan(source: Path, out: OutputFormat) -> tuple[NiftiVolume, list | None]:
    """The scan as a volume in HU with its affine, and (DICOM SEG output only) its slices' headers."""
    if not Path(source).is_dir():
        return read_volume(source), None
    from ctprep.dicom import read_series, read_series_and_headers

    if out.format == "dicom-seg":
        return read_series_and_headers(source, out.allow_tilt)
    return read_series(source, out.allow_tilt), None


def write_scan(volume: NiftiVolume, headers: list | None, data: np.ndarray, destination: Path, out: OutputFormat,
               descrip: str = "ctstack predict") -> None:
    """Write a prediction on ``volume``'s grid: a DICOM SEG over ``headers``, NIfTI with a NIfTI source's header,
    or NIfTI on a DICOM series' affine."""
    if out.format == "dicom-seg":
        from ctmodel.dicom_seg import prediction_seg, write_seg

        if headers is None:
            raise CaseError(f"{volume.path}: a DICOM SEG needs the DICOM series' headers; predict a series folder")
        write_seg(prediction_seg(volume, headers, data, out.probabilities, out.author), destination)
    elif Path(volume.path).is_dir():
        write_with_affine(data, volume.affine, destination, descrip)
    else:
        write_like(volume.path, data, destination, descrip)
