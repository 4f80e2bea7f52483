"""Geometry through `convert`: orientation invariance, air padding, few slices, and an invertible mask round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import phantom, ras_affine, save_nifti, to_lps, to_permuted

from ctprep import geometry
from ctprep.convert import ConvertConfig, convert
from ctprep.store import SliceStore
from ctprep.window import air_value, encode

CFG = ConvertConfig(size=16, workers=1)


def write_case(raw: Path, name: str, hu: np.ndarray, mask: np.ndarray | None, affine: np.ndarray, **kw) -> None:
    save_nifti(raw / f"{name}_ct.nii.gz", hu, affine, **kw)
    if mask is not None:
        save_nifti(raw / f"{name}_seg.nii.gz", mask.astype(np.uint8), affine)


def test_ras_lps_and_permuted_files_give_identical_stored_arrays(tmp_path):
    hu, lesion = phantom()
    affine = ras_affine()
    write_case(tmp_path / "raw", "ras", hu, lesion, affine)
    lps_hu, lps_affine = to_lps(hu, affine)
    write_case(tmp_path / "raw", "lps", lps_hu, to_lps(lesion, affine)[0], lps_affine)
    perm_hu, perm_affine = to_permuted(hu, affine)
    write_case(tmp_path / "raw", "perm", perm_hu, to_permuted(lesion, affine)[0], perm_affine)
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert store.geometry("lps").source_orientation == "LPS"
    assert store.geometry("perm").source_orientation == "SRA"
    for other in ("lps", "perm"):
        np.testing.assert_array_equal(store.read_image_raw(other), store.read_image_raw("ras"))
        np.testing.assert_array_equal(store.read_mask(other), store.read_mask("ras"))


def test_slice_zero_is_inferior_row_zero_anterior_column_zero_patient_right(tmp_path):
    hu = np.full((16, 16, 3), -1000.0, np.float32)
    hu[8:, :, 0] = 400.0  # slice 0 (inferior): bright on the patient's right (+x in RAS+)
    hu[:, 12:, 2] = 400.0  # top slice (superior): bright anterior (+y)
    write_case(tmp_path / "raw", "a", hu, None, ras_affine((1.0, 1.0, 1.0)))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    stored = SliceStore.open(tmp_path / "s.zarr").read_image("a")
    assert stored[0, :, :4].min() > 0.9 and stored[0, :, -4:].max() < 0.1  # right shown on the left
    assert stored[1].max() < 0.1
    assert stored[2, :4].min() > 0.9 and stored[2, -4:].max() < 0.1  # anterior at the top (row 0)


def test_non_square_slices_are_padded_with_air(tmp_path):
    hu = np.full((32, 16, 2), 400.0, np.float32)  # body fills the whole 32 x 16 plane
    write_case(tmp_path / "raw", "a", hu, None, ras_affine((1.0, 1.0, 1.0)))
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=32, workers=1), progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert store.geometry("a").pad == (8, 8, 0, 0)  # rows (y) padded: 16 -> 32, centred
    stored = store.read_image_raw("a")
    air = encode(np.float32(air_value(CFG.window_hu)), "float16")
    assert np.all(stored[:, :7] == air) and np.all(stored[:, -7:] == air)
    assert np.all(stored[:, 9:-9] == encode(np.float32(1.0), "float16"))


@pytest.mark.parametrize("n_slices", [1, 2])
def test_volumes_with_one_or_two_slices_convert(tmp_path, n_slices):
    hu, lesion = phantom(shape=(23, 17, n_slices))
    lesion[10:14, 7:10, -1] = True
    write_case(tmp_path / "raw", "a", hu, lesion, ras_affine())
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert report.converted == ["a"] and store.read_image_raw("a").shape == (n_slices, 16, 16)
    assert store.index()["has_lesion"].tolist()[-1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_stored_mask_inverted_to_source_geometry_matches_source_mask(tmp_path):
    shape = (96, 80, 12)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    lesion = ((x - 40) ** 2 + (y - 42) ** 2 <= 20**2) & (z >= 3) & (z < 9)
    hu = np.where(lesion, -300.0, -850.0).astype(np.float32)
    data, affine = to_lps(hu, ras_affine((0.7, 0.8, 2.5)))
    source_mask = to_lps(lesion, ras_affine())[0]
    write_case(tmp_path / "raw", "a", data, source_mask, affine)
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=64, workers=1), progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    back = geometry.inverse_mask(store.read_mask("a"), store.geometry("a"))
    assert back.shape == source_mask.shape
    assert dice(back.astype(bool), source_mask) >= 0.95


@pytest.mark.parametrize("n_in, n_out", [(64, 32), (64, 16), (30, 10), (23, 16), (16, 24)])
def test_resize_equals_the_dense_antialiased_filter(n_in, n_out):
    planes = np.random.default_rng(0).random((3, n_in, n_in), dtype=np.float32)
    weights = geometry.resize_matrix(n_in, n_out).astype(np.float64)
    expected = weights @ planes.astype(np.float64) @ weights.T
    np.testing.assert_allclose(geometry.resize_planes(planes, n_out), expected, atol=1e-6)


def test_mask_forward_equals_thresholded_image_forward_on_every_slice():
    _, lesion = phantom(shape=(40, 31, 7))
    geom = geometry.describe(ras_affine(), lesion.shape, 16)
    dense = geometry.forward(lesion.astype(np.float32), geom, fill=0.0) >= 0.5
    np.testing.assert_array_equal(geometry.forward_mask(lesion, geom), dense.astype(np.uint8))
