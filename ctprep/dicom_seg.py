"""DICOM SEG masks in: a Segmentation object on the grid of the series ``ctprep.dicom`` read, as a boolean
(X, Y, Z) mask in that volume's array order. Needs ``ctstack[dicom]`` (highdicom)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctprep.dicom import DicomVolume, untilt
from ctprep.dicom_files import require_highdicom
from ctprep.errors import CaseError

FRACTIONAL_LESION = 0.5  # a FRACTIONAL SEG's voxel is lesion from this probability/occupancy on


def read_seg_mask(path: Path, image: DicomVolume) -> np.ndarray:
    """The union of a SEG's segments on ``image``'s slices as bool (X, Y, Z): binary segments any nonzero,
    fractional ones from FRACTIONAL_LESION; the SEG must reference the series read (CaseError otherwise).
    A tilted series resampled by ``--allow-tilt`` has its mask resampled alike."""
    hd = require_highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as err:  # highdicom/pydicom raise many types for damaged or non-SEG files
        raise CaseError(f"{path}: unreadable DICOM SEG ({type(err).__name__}: {err}); re-export the mask") from err
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if image.series_uid not in referenced:
        raise CaseError(f"{path}: SEG references series {', '.join(sorted(referenced)) or 'none'}, expected the "
                        f"series read from {image.path} ({image.series_uid}); export the mask on that series")
    try:
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(image.instance_uids), assert_missing_frames_are_empty=True,
            ignore_spatial_locations=True)  # (slices, rows, cols, segments)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CaseError(f"{path}: SEG frames do not match the slices of {image.path} ({err}); export the mask "
                        "on that series") from err
    if str(seg.SegmentationType).upper() == "FRACTIONAL":
        lesion = (frames >= FRACTIONAL_LESION).any(axis=-1)
    else:
        lesion = (frames != 0).any(axis=-1)
    mask = lesion.transpose(2, 1, 0)  # (cols, rows, slices): the volume's (X, Y, Z)
    if any(image.tilt_shift):  # the image was resampled (--allow-tilt): the mask follows, linear then >= 0.5
        mask = untilt(mask.astype(np.float32), image.tilt_shift, fill=0.0) >= 0.5
    if mask.shape != image.data.shape:
        raise CaseError(f"{path}: SEG shape {mask.shape} != image shape {image.data.shape} ({image.path}); "
                        "export the mask on the image grid")
    return mask
