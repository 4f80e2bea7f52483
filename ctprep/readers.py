"""A case's image and masks from whichever format holds them: a NIfTI file, or a DICOM series folder with a
DICOM SEG (or NIfTI) mask. Both give ``ctprep.nifti.NiftiVolume`` (HU, RAS affine), so nothing downstream
knows the format; the DICOM modules (and pydicom) are imported only for a DICOM case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctprep.dicom_files import is_dicom_file
from ctprep.discover import nifti_stem
from ctprep.errors import CaseError
from ctprep.nifti import NiftiVolume, read_mask, read_volume


def read_image(path: Path) -> NiftiVolume:
    """A NIfTI image file, or a DICOM case folder's CT series (a ``DicomVolume`` with notes and instance UIDs)."""
    if Path(path).is_dir():
        from ctprep.dicom import read_series

        return read_series(path)
    return read_volume(path)


def read_case_mask(path: Path, image: NiftiVolume) -> np.ndarray:
    """A mask on ``image``'s grid as bool: a NIfTI file, or a DICOM SEG of the DICOM series ``image`` came from."""
    if nifti_stem(Path(path)) is not None or not is_dicom_file(Path(path)):
        return read_mask(path, image)
    from ctprep.dicom import DicomVolume
    from ctprep.dicom_seg import read_seg_mask

    if not isinstance(image, DicomVolume):
        raise CaseError(f"{path}: a DICOM SEG mask needs a DICOM series image, found {image.path}; export the "
                        "mask as NIfTI on the image grid")
    return read_seg_mask(path, image)


def image_notes(image: NiftiVolume) -> list[str]:
    """What reading ``image`` dropped or ignored (DICOM localizers, other series); [] for NIfTI."""
    return list(getattr(image, "notes", ()))
