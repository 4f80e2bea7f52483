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
