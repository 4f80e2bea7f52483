"""Recognising DICOM files without pydicom (the 128-byte preamble + "DICM"), and importing the optional
``ctstack[dicom]`` packages only when a DICOM case or ``--format dicom`` needs them.

A file is DICOM when bytes 128..131 read ``DICM`` (DICOM Part 10), whatever its name (``.dcm`` or none).
Files without the preamble (old ACR-NEMA dumps) are not read: pydicom would have to guess (``force=True``) and
mistakes a text file for a dataset; such a folder is reported as holding no DICOM (docs/dicom.md).
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ctprep.errors import UsageError

MAGIC_OFFSET = 128
MAGIC = b"DICM"
INSTALL_HINT = "pip install 'ctstack[dicom]'"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
MASK_CLASSES = (SEG_CLASS, RTSTRUCT_CLASS)  # objects in a case folder that are its mask


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a regular, non-hidden file with the DICOM Part 10 preamble (DICOMDIR excluded)."""
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAGIC_OFFSET + len(MAGIC))
    except OSError:
        return False
    return head[MAGIC_OFFSET:] == MAGIC


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``, sorted by name (the order carries no meaning)."""
    return [path for path in sorted(Path(folder).iterdir()) if is_dicom_file(path)]


def images_and_masks(folder: Path) -> tuple[list[Path], list[Path]]:
    """The DICOM files directly in ``folder`` split into image slices and mask objects (SEG, RTSTRUCT, by SOP
    Class UID); a folder with at least one image is a series (case) folder. pydicom only when DICOM is found."""
    images, masks = [], []
    for path in dicom_files(folder):
        (masks if sop_class(path) in MASK_CLASSES else images).append(path)
    return images, masks


def sop_class(path: Path) -> str:
    """The file's Media Storage SOP Class UID (from the file meta group only; no pixel data is read); "" when the
    meta group is unreadable (the series reader then refuses the file, naming it)."""
    pydicom = require_pydicom()
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # pydicom raises many types for damaged headers
        return ""
    return str(meta.get("MediaStorageSOPClassUID", ""))


def require_pydicom() -> ModuleType:
    """pydicom, or a one-line UsageError saying how to install the ``dicom`` extra."""
    try:
        import pydicom
        import pydicom.filereader
    except ImportError as err:
        raise UsageError(f"DICOM input needs pydicom, which is not installed; {INSTALL_HINT}") from err
    return pydicom


def require_highdicom() -> ModuleType:
    """highdicom (DICOM SEG), or a one-line UsageError saying how to install the ``dicom`` extra."""
    try:
        import highdicom
    except ImportError as err:
        raise UsageError(f"DICOM SEG needs highdicom, which is not installed; {INSTALL_HINT}") from err
    return highdicom
