"""A case's image and masks from whichever format holds them: a NIfTI file, or a DICOM series folder with a
DICOM SEG, RTSTRUCT or NIfTI mask. Both give ``ctprep.nifti.NiftiVolume`` (HU, RAS affine), so nothing downstream
knows the format; the DICOM modules (and pydicom) are imported only for a DICOM case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctprep.dicom_files import RTSTRUCT_CLASS, is_dicom_file, sop_class
from ctprep.discover import nifti_stem
from ctprep.errors import CaseError
from ctprep.nifti import NiftiVolume, read_mask, read_volume


def read_image(path: Path, allow_tilt: bool = False) -> NiftiVolume:
    """A NIfTI image file, or a DICOM case folder's CT series (a ``DicomVolume`` with notes and instance UIDs;
    ``allow_tilt`` resamples a gantry-tilted series instead of refusing it)."""
    if Path(path).is_dir():
        from ctprep.dicom import read_series

        return read_series(path, allow_tilt)
    return read_volume(path)


def read_case_mask(path: Path, image: NiftiVolume) -> np.ndarray:
    """A mask on ``image``'s grid as bool: a NIfTI file, or a DICOM SEG or RTSTRUCT (rasterised) of the DICOM
    series ``image`` came from."""
    path = Path(path)
    if not is_dicom_mask(path):
        return read_mask(path, image)
    from ctprep.dicom import DicomVolume

    if not isinstance(image, DicomVolume):
        raise CaseError(f"{path}: a DICOM mask needs a DICOM series image, found {image.path}; export the mask "
                        "as NIfTI on the image grid")
    if sop_class(path) == RTSTRUCT_CLASS:
        from ctprep.dicom_rtstruct import read_rtstruct_mask

        return read_rtstruct_mask(path, image)
    from ctprep.dicom_seg import read_seg_mask

    return read_seg_mask(path, image)


def is_dicom_mask(path: Path) -> bool:
    """Whether a mask file is a DICOM object (SEG or RTSTRUCT, read onto a series) rather than NIfTI."""
    path = Path(path)
    return nifti_stem(path) is None and is_dicom_file(path)


def image_notes(image: NiftiVolume) -> list[str]:
    """What reading ``image`` dropped or ignored (DICOM localizers, other series); [] for NIfTI."""
    return list(getattr(image, "notes", ()))
