"""Reading a DICOM case folder (ctprep.dicom): the series picked, the slice order, HU and the affine; every
refusal names the folder and says why in one line (docs/dicom.md)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import phantom, ras_affine
from dicom_helpers import edit_slices, pydicom, write_dicom

from ctprep.demo.dicom_writer import SeriesSpec, write_localizer
from ctprep.dicom import read_series
from ctprep.errors import CaseError


@pytest.fixture
def volume():
    """(HU as the int16 values a scanner stores, affine) of a tiny phantom."""
    hu, _ = phantom()
    return np.rint(hu), ras_affine()


def test_series_reads_back_the_hu_and_the_affine_it_was_written_with(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "c", hu, affine, intercept=-1024.0)
    image = read_series(tmp_path / "c")
    assert image.data.dtype == np.float32 and np.array_equal(image.data, hu)
    np.testing.assert_allclose(image.affine, affine, atol=1e-9)
    assert image.notes == () and len(image.instance_uids) == hu.shape[2]


def test_shuffled_file_names_and_reversed_instance_numbers_change_nothing(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "ordered", hu, affine)
    write_dicom(tmp_path / "shuffled", hu, affine, names="shuffled")
    edit_slices(tmp_path / "shuffled", lambda ds, k: setattr(ds, "InstanceNumber", 100 - ds.InstanceNumber), "*")
    assert not any(p.name.endswith(".dcm") for p in (tmp_path / "shuffled").iterdir())
    assert np.array_equal(read_series(tmp_path / "shuffled").data, read_series(tmp_path / "ordered").data)


def test_slices_written_head_first_are_sorted_along_the_normal(tmp_path, volume):
    hu, affine = volume
    flipped = affine.copy()
    flipped[:3, 2] *= -1  # slice k is k steps towards the feet
    flipped[:3, 3] = affine[:3, :3] @ [0, 0, hu.shape[2] - 1] + affine[:3, 3]
    write_dicom(tmp_path / "c", hu[:, :, ::-1], flipped)
    image = read_series(tmp_path / "c")
    assert np.array_equal(image.data, hu)
    np.testing.assert_allclose(image.affine, affine, atol=1e-9)


def test_rescale_slope_and_intercept_apply_per_slice(tmp_path, volume):
    hu, affine = volume

    def shift_odd_slices(ds, k):
        if k % 2:  # same HU stored as value + 1024 with intercept -1024 (and slope 2 on slice 1: halved values)
            slope = 2.0 if k == 1 else 1.0
            stored = ((ds.pixel_array.astype(np.float64) + 1024) / slope).astype(np.int16)
            ds.PixelData, ds.RescaleIntercept, ds.RescaleSlope = stored.tobytes(), "-1024", str(slope)

    write_dicom(tmp_path / "c", hu + hu % 2, affine)  # even values: slope 2 is exact
    edit_slices(tmp_path / "c", shift_odd_slices)
    assert np.array_equal(read_series(tmp_path / "c").data, hu + hu % 2)


@pytest.mark.parametrize("syntax", ["JPEGLSLossless", "JPEG2000Lossless"])
def test_lossless_compressed_series_decodes_to_the_same_hu(tmp_path, syntax):
    hu, affine = np.rint(phantom(shape=(40, 36, 5))[0]), ras_affine()  # openjpeg encodes 32+ pixels a side
    write_dicom(tmp_path / "c", hu, affine, transfer_syntax=getattr(pydicom.uid, syntax))
    first = pydicom.dcmread(sorted((tmp_path / "c").iterdir())[0])
    assert first.file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    assert np.array_equal(read_series(tmp_path / "c").data, hu)


def test_picker_takes_the_thin_series_and_drops_the_localizer(tmp_path, volume):
    hu, affine = volume
    thick = affine.copy()
    thick[:3, 2] *= 2
    write_dicom(tmp_path / "c", hu, affine, description="thin")
    write_dicom(tmp_path / "c", hu[:, :, ::2], thick, series_number=3, description="thick", prefix="THICK")
    write_localizer(tmp_path / "c", 17, 0.7, SeriesSpec(("test", "c")))
    image = read_series(tmp_path / "c")
    assert np.array_equal(image.data, hu)
    assert any("dropped 1 localizer" in note for note in image.notes)
    assert any("read series 'thin'" in note and "ignored 'thick'" in note for note in image.notes)


def test_an_image_of_another_orientation_in_the_series_is_dropped(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "c", hu, affine)
    write_dicom(tmp_path / "c", hu[:, :, :1], affine, prefix="X", entropy=("test", "c"))
    edit_slices(tmp_path / "c", lambda ds, k: setattr(ds, "ImageOrientationPatient", [-1, 0, 0, 0, 0, -1]), "X*")
    image = read_series(tmp_path / "c")
    assert np.array_equal(image.data, hu)
    assert any("another orientation" in note for note in image.notes)


def refused(folder) -> str:
    with pytest.raises(CaseError) as err:
        read_series(folder)
    message = str(err.value)
    assert message.startswith(str(folder)) and "\n" not in message
    return message


def test_missing_slice_is_refused(tmp_path, volume):
    write_dicom(tmp_path / "c", *volume)
    (tmp_path / "c" / "CT0005.dcm").unlink()
    assert "missing slices: a gap of 5 mm" in refused(tmp_path / "c")


def test_uneven_spacing_is_refused(tmp_path, volume):
    write_dicom(tmp_path / "c", *volume)
    edit_slices(tmp_path / "c", lambda ds, k: k == 4 and setattr(ds, "ImagePositionPatient",
                                                                [*ds.ImagePositionPatient[:2], ds.ImagePositionPatient[2] + 0.6]))
    assert "uneven slice spacing" in refused(tmp_path / "c")


def test_two_slices_at_one_position_are_refused(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "c", hu, affine)
    write_dicom(tmp_path / "c", hu[:, :, :1], affine, prefix="DUP", entropy=("test", "c"))
    edit_slices(tmp_path / "c", lambda ds, k: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()), "DUP*")
    assert "same position" in refused(tmp_path / "c")


def test_gantry_tilt_is_refused(tmp_path, volume):
    write_dicom(tmp_path / "c", *volume)
    edit_slices(tmp_path / "c", lambda ds, k: setattr(ds, "ImagePositionPatient", [
        ds.ImagePositionPatient[0], ds.ImagePositionPatient[1] + 0.2 * k, ds.ImagePositionPatient[2]]))
    message = refused(tmp_path / "c")
    assert "gantry tilt: slices step 4.57 deg off their normal" in message and "--allow-tilt" in message


def test_mixed_slice_sizes_are_refused(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "c", hu, affine)
    below = affine.copy()
    below[:3, 3] -= affine[:3, 2]
    write_dicom(tmp_path / "c", hu[:11, :, :1], below, prefix="SMALL", entropy=("test", "c"))
    assert "mixed slice sizes" in refused(tmp_path / "c")


def test_non_ct_modality_is_refused(tmp_path, volume):
    write_dicom(tmp_path / "c", *volume)
    edit_slices(tmp_path / "c", lambda ds, k: setattr(ds, "Modality", "MR"))
    assert "expected a CT series, found modality MR" in refused(tmp_path / "c")


def test_two_axial_series_of_equal_length_are_ambiguous(tmp_path, volume):
    hu, affine = volume
    write_dicom(tmp_path / "c", hu, affine, description="soft")
    write_dicom(tmp_path / "c", hu, affine, series_number=4, description="lung", prefix="LUNG")
    message = refused(tmp_path / "c")
    assert "ambiguous: 2 axial CT series with 9 slices" in message and "'soft'" in message and "'lung'" in message


def test_a_damaged_slice_file_fails_the_case_naming_the_file(tmp_path, volume):
    from ctprep.convert import ConvertConfig, convert

    write_dicom(tmp_path / "raw" / "c", *volume)
    damaged = tmp_path / "raw" / "c" / "CT0003.dcm"
    damaged.write_bytes(damaged.read_bytes()[:200])  # the preamble survives, the header does not
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1), progress=False)
    (line,) = report.failed
    assert line.startswith(f"{damaged}: expected a CT slice with pixel data") and "\n" not in line
