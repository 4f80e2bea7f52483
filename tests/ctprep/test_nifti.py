"""Reading NIfTI as real datasets write it (scl_slope/inter, uint16 offsets, 0/255 masks) and refusing bad files."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import phantom, ras_affine, save_nifti, to_lps

from ctprep import nifti
from ctprep.errors import CaseError
from ctprep.nifti import gzip_bytes, read_mask, read_volume

DIM_OFFSET, PIXDIM_OFFSET = 40, 76  # NIfTI-1 header: int16 dim[8], float32 pixdim[8]


def patch_header(path: Path, dim: tuple[int, ...] | None = None, pixdim: tuple[float, ...] | None = None) -> Path:
    """Rewrite dim/pixdim of an uncompressed .nii in place, leaving the data as it is (a lying header)."""
    raw = bytearray(path.read_bytes())
    if dim is not None:
        raw[DIM_OFFSET:DIM_OFFSET + 16] = struct.pack("<8h", len(dim), *dim, *([1] * (7 - len(dim))))
    if pixdim is not None:
        raw[PIXDIM_OFFSET + 4:PIXDIM_OFFSET + 4 + 4 * len(pixdim)] = struct.pack(f"<{len(pixdim)}f", *pixdim)
    path.write_bytes(bytes(raw))
    return path


def test_int16_with_slope_and_inter_reads_as_hu(tmp_path):
    hu, _ = phantom()
    hu = np.rint(hu / 0.5) * 0.5  # representable with slope 0.5
    path = save_nifti(tmp_path / "a.nii.gz", hu, ras_affine(), dtype=np.int16, slope=0.5, inter=-1024.0)
    assert nib.load(path).get_data_dtype() == np.int16
    volume = read_volume(path)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data, hu, atol=1e-3)


def test_uint16_with_offset_inter_reads_as_hu(tmp_path):
    hu, _ = phantom()
    hu = np.clip(np.rint(hu), -1024, None)
    path = save_nifti(tmp_path / "a.nii", hu, ras_affine(), dtype=np.uint16, slope=1.0, inter=-1024.0)
    assert nib.load(path).get_data_dtype() == np.uint16
    np.testing.assert_array_equal(read_volume(path).data, hu)


def test_float32_hu_reads_unchanged(tmp_path):
    hu, _ = phantom()
    path = save_nifti(tmp_path / "a.nii.gz", hu, ras_affine(), dtype=np.float32)
    np.testing.assert_array_equal(read_volume(path).data, hu)


def test_lps_affine_is_returned_as_stored_in_the_file(tmp_path):
    hu, _ = phantom()
    data, affine = to_lps(hu, ras_affine())
    volume = read_volume(save_nifti(tmp_path / "a.nii.gz", data, affine))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(volume.data, data)


@pytest.mark.parametrize("encode", [
    lambda m: m.astype(np.uint8),
    lambda m: m.astype(np.uint8) * 255,
    lambda m: m.astype(np.float32),
    lambda m: (m * (1 + np.indices(m.shape)[0] % 2)).astype(np.int16),  # labels {0, 1, 2}
], ids=["0/1", "0/255", "float 0.0/1.0", "labels 0/1/2"])
def test_any_nonzero_mask_voxel_is_lesion(tmp_path, encode):
    hu, lesion = phantom()
    image = read_volume(save_nifti(tmp_path / "a.nii.gz", hu, ras_affine()))
    mask = read_mask(save_nifti(tmp_path / "m.nii.gz", encode(lesion), ras_affine()), image)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, lesion)


def test_4d_with_trailing_singleton_is_squeezed(tmp_path):
    hu, _ = phantom()
    volume = read_volume(save_nifti(tmp_path / "a.nii.gz", hu[..., None], ras_affine()))
    assert volume.data.shape == hu.shape


def test_mask_affine_within_tolerance_is_accepted(tmp_path):
    hu, lesion = phantom()
    image = read_volume(save_nifti(tmp_path / "a.nii.gz", hu, ras_affine()))
    nudged = ras_affine()
    nudged[0, 3] += 1e-4  # float32 rounding as exported by some tools
    assert read_mask(save_nifti(tmp_path / "m.nii.gz", lesion.astype(np.uint8), nudged), image).sum() == lesion.sum()


def expect_case_error(path: Path, *words: str, read=read_volume) -> None:
    with pytest.raises(CaseError) as info:
        read(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text
    for word in words:
        assert word in text


@pytest.fixture(params=["isal", "zlib"])
def gunzip(request, monkeypatch):
    """Run a test through both gzip paths: ISA-L (when installed) and nibabel's stock zlib."""
    if request.param == "isal" and nifti.isal_zlib is None:
        pytest.skip("isal not installed")
    if request.param == "zlib":
        monkeypatch.setattr(nifti, "isal_zlib", None)
    return request.param


def test_both_gzip_paths_read_identical_values(tmp_path, gunzip):
    hu, lesion = phantom()
    image_path = save_nifti(tmp_path / "a.nii.gz", hu, ras_affine(), dtype=np.int16, slope=1.0, inter=-1024.0)
    image = read_volume(image_path)
    np.testing.assert_array_equal(image.data, np.rint(hu))
    mask = read_mask(save_nifti(tmp_path / "m.nii.gz", lesion.astype(np.uint8) * 255, ras_affine()), image)
    np.testing.assert_array_equal(mask, lesion)


def test_gzip_bytes_is_plain_gzip_and_reproducible_with_a_zero_time_stamp(monkeypatch, gunzip):
    if gunzip == "zlib":
        monkeypatch.setattr(nifti, "igzip", None)  # the writer's fallback with the reader's
    mask = np.zeros((64, 64, 16), np.uint8)
    mask[20:40, 10:30, 4:9] = 1
    payload = mask.tobytes()  # a mask: mostly zeros, so gzip must shrink it
    packed = gzip_bytes(payload, mtime=0)
    assert gzip.decompress(packed) == payload
    assert packed == gzip_bytes(payload, mtime=0)  # what the demo writer relies on
    assert packed[4:8] == b"\0\0\0\0"  # gzip's MTIME field
    assert len(packed) < len(payload) / 10


def test_truncated_gzip_is_refused_naming_the_file(tmp_path, gunzip):
    hu, _ = phantom()
    path = save_nifti(tmp_path / "a.nii.gz", hu, ras_affine())
    path.write_bytes(path.read_bytes()[:-200])
    expect_case_error(path, "truncated")


def test_truncated_uncompressed_file_is_refused(tmp_path):
    hu, _ = phantom()
    path = save_nifti(tmp_path / "a.nii", hu, ras_affine())
    path.write_bytes(path.read_bytes()[:-100])
    expect_case_error(path, "truncated")


def test_file_that_is_not_nifti_is_refused(tmp_path):
    path = tmp_path / "a.nii.gz"
    path.write_bytes(b"<html>404 not found</html>")
    expect_case_error(path, "unreadable")


@pytest.mark.parametrize("shape", [(23, 17), (23, 17, 9, 2)])
def test_non_3d_images_are_refused(tmp_path, shape):
    path = save_nifti(tmp_path / "a.nii.gz", np.zeros(shape, np.float32), ras_affine())
    expect_case_error(path, "expected a 3-D volume")


@pytest.mark.parametrize("dim", [(30000, 30000, 9), (512, 512, 20000), (2048, 2048, 2000)],
                         ids=["in-plane", "slices", "bytes"])
def test_absurd_header_sizes_are_refused_before_reading(tmp_path, dim):
    path = patch_header(save_nifti(tmp_path / "a.nii", np.zeros((4, 4, 4), np.int16), ras_affine()), dim=dim)
    expect_case_error(path, "header claims shape")


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, float("nan"))])
def test_zero_negative_or_nan_voxel_sizes_are_refused(tmp_path, pixdim):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None)  # no sform/qform: the affine comes from pixdim
    path = tmp_path / "a.nii"
    nib.save(img, str(path))
    expect_case_error(patch_header(path, pixdim=pixdim), "voxel sizes")


def test_non_finite_values_are_refused(tmp_path):
    hu, _ = phantom()
    hu[3, 4, 5] = np.nan
    hu[1, 1, 1] = np.inf
    expect_case_error(save_nifti(tmp_path / "a.nii.gz", hu, ras_affine()), "2 NaN/inf")


def test_mask_shape_mismatch_is_refused(tmp_path):
    hu, lesion = phantom()
    image = read_volume(save_nifti(tmp_path / "a.nii.gz", hu, ras_affine()))
    path = save_nifti(tmp_path / "m.nii.gz", lesion[:, :, :-1].astype(np.uint8), ras_affine())
    expect_case_error(path, "mask shape (23, 17, 8) != image shape (23, 17, 9)",
                      read=lambda p: read_mask(p, image))


def test_mask_affine_mismatch_is_refused(tmp_path):
    hu, lesion = phantom()
    image = read_volume(save_nifti(tmp_path / "a.nii.gz", hu, ras_affine()))
    shifted = ras_affine(origin=(-8.0, -6.0, -12.5))  # one slice off
    path = save_nifti(tmp_path / "m.nii.gz", lesion.astype(np.uint8), shifted)
    expect_case_error(path, "mask affine differs", read=lambda p: read_mask(p, image))
