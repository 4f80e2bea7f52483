"""DICOM cases through `ctprep convert`: discovery (case id = folder name, SEG or NIfTI masks), the same stored
arrays as the same volume in NIfTI, the SEG round trip, the demo's DICOM set end to end (docs/dicom.md)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import phantom, ras_affine, save_nifti, to_lps
from dicom_helpers import box, write_dicom, write_rtstruct
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.demo.dicom_writer import SeriesSpec, write_seg
from ctprep.dicom import read_series
from ctprep.dicom_seg import read_seg_mask
from ctprep.discover import find_cases
from ctprep.errors import CaseError, UsageError
from ctprep.readers import read_case_mask, read_image
from ctprep.store import SliceStore

runner = CliRunner()


def hu_and_mask(seed: int = 0):
    hu, mask = phantom(seed=seed)
    return np.rint(hu), mask


def dicom_case(folder, hu, mask, affine, **spec):
    """A DICOM case folder with its SEG."""
    sources = write_dicom(folder, hu, affine, **spec)
    write_seg(folder / "seg.dcm", mask, sources, SeriesSpec(("test", folder.name)))
    return folder


def stored(store_path, case_id):
    store = SliceStore.open(store_path)
    return store.read_image_raw(case_id), store.read_mask(case_id), store.case_attrs(case_id)["geometry"]


def test_a_dicom_folder_is_a_case_named_after_the_folder_with_its_seg(tmp_path):
    hu, mask = hu_and_mask()
    dicom_case(tmp_path / "raw" / "site1" / "patient7", hu, mask, ras_affine())
    (tmp_path / "raw" / "site1" / "patient7" / "README.txt").write_text("not DICOM")
    found = find_cases(tmp_path / "raw")
    assert [(c.case_id, c.image_path.name, c.mask_path.name) for c in found.cases] == [("patient7", "patient7",
                                                                                         "seg.dcm")]
    assert found.problems == []


def test_a_nifti_mask_beside_the_folder_is_its_mask(tmp_path):
    hu, mask = hu_and_mask()
    write_dicom(tmp_path / "raw" / "p1", hu, ras_affine())
    save_nifti(tmp_path / "raw" / "p1_seg.nii.gz", mask.astype(np.uint8), ras_affine())
    (case,) = find_cases(tmp_path / "raw").cases
    assert case.mask_path == tmp_path / "raw" / "p1_seg.nii.gz"


def test_two_folders_with_one_name_fail_naming_both(tmp_path):
    hu, _ = hu_and_mask()
    write_dicom(tmp_path / "raw" / "a" / "scan", hu, ras_affine())
    write_dicom(tmp_path / "raw" / "b" / "scan", hu, ras_affine())
    (problem,) = find_cases(tmp_path / "raw").problems
    assert str(tmp_path / "raw" / "a" / "scan") in problem and str(tmp_path / "raw" / "b" / "scan") in problem
    assert "rename one folder" in problem


def test_rtstruct_is_rasterised_on_the_image_grid_with_holes_and_without_organs(tmp_path):
    hu, _ = hu_and_mask()
    sources = write_dicom(tmp_path / "raw" / "p1", hu, ras_affine(), names="shuffled")
    lesion = [(k, box((2.5, 3.5), (10.5, 12.5))) for k in (3, 4, 5)] + [(4, box((5.5, 6.5), (7.5, 8.5)))]  # a hole
    write_rtstruct(tmp_path / "raw" / "p1" / "rt.dcm", sources,
                   [("body", "EXTERNAL", [(k, box((0, 0), (22, 16))) for k in range(9)]), ("GGO", "", lesion)])
    (case,) = find_cases(tmp_path / "raw").cases
    assert case.mask_path.name == "rt.dcm"
    expected = np.zeros(hu.shape, bool)
    expected[3:11, 4:13, 3:6] = True  # voxel centres 3..10 (columns) and 4..12 (rows) lie inside the box
    expected[6:8, 7:9, 4] = False
    assert np.array_equal(read_case_mask(case.mask_path, read_image(case.image_path)), expected)


def test_rtstruct_contour_between_slices_is_refused(tmp_path):
    hu, _ = hu_and_mask()
    sources = write_dicom(tmp_path / "p1", hu, ras_affine())
    write_rtstruct(tmp_path / "p1" / "rt.dcm", sources, [("GGO", "", [(3.5, box((2.5, 3.5), (10.5, 12.5)))])])
    with pytest.raises(CaseError, match="lies between slices"):
        read_case_mask(tmp_path / "p1" / "rt.dcm", read_image(tmp_path / "p1"))


def test_rtstruct_of_another_series_is_refused(tmp_path):
    hu, _ = hu_and_mask()
    sources = write_dicom(tmp_path / "p1", hu, ras_affine())
    write_rtstruct(tmp_path / "p1" / "rt.dcm", sources, [("GGO", "", [(3, box((2.5, 3.5), (10.5, 12.5)))])])
    write_dicom(tmp_path / "p2", hu, ras_affine(), entropy=("other",))
    with pytest.raises(CaseError, match="RTSTRUCT references series"):
        read_case_mask(tmp_path / "p1" / "rt.dcm", read_image(tmp_path / "p2"))


def test_without_the_dicom_extra_a_dicom_folder_gives_the_install_line(tmp_path, monkeypatch):
    write_dicom(tmp_path / "raw" / "p1", hu_and_mask()[0], ras_affine())
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'ctstack\[dicom\]'"):
        find_cases(tmp_path / "raw")


def test_seg_mask_reads_back_equal_to_the_mask_written(tmp_path):
    hu, mask = hu_and_mask()
    dicom_case(tmp_path / "p1", hu, mask, ras_affine(), names="shuffled")
    assert np.array_equal(read_seg_mask(tmp_path / "p1" / "seg.dcm", read_series(tmp_path / "p1")), mask)


def test_seg_of_another_series_is_refused(tmp_path):
    hu, mask = hu_and_mask()
    dicom_case(tmp_path / "p1", hu, mask, ras_affine())
    write_dicom(tmp_path / "p2", hu, ras_affine(), entropy=("other",))
    with pytest.raises(CaseError, match="SEG references series .* expected the series read from"):
        read_seg_mask(tmp_path / "p1" / "seg.dcm", read_series(tmp_path / "p2"))


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_dicom_case_gives_the_same_store_as_the_volume_in_nifti(tmp_path, orientation):
    hu, mask = hu_and_mask()
    affine = ras_affine()
    if orientation == "LPS":
        (hu, affine), (mask, _) = to_lps(hu, affine), to_lps(mask, affine)
    dicom_case(tmp_path / "dicom" / "p1", hu, mask, affine, intercept=-1024.0)
    save_nifti(tmp_path / "nifti" / "p1_ct.nii.gz", hu, affine, slope=1.0, inter=-1024.0)
    save_nifti(tmp_path / "nifti" / "p1_seg.nii.gz", mask.astype(np.uint8), affine)
    for name in ("dicom", "nifti"):
        report = convert(tmp_path / name, tmp_path / f"{name}.zarr", ConvertConfig(size=16, workers=1), progress=False)
        assert report.converted == ["p1"] and report.failed == []
    (image_d, mask_d, geom_d), (image_n, mask_n, geom_n) = (stored(tmp_path / f"{n}.zarr", "p1")
                                                           for n in ("dicom", "nifti"))
    np.testing.assert_allclose(image_d.astype(np.float32), image_n.astype(np.float32), atol=1e-3)
    assert np.array_equal(mask_d, mask_n) and mask_d.any()
    assert geom_d["source_shape"] == geom_n["source_shape"] and geom_d["pad"] == geom_n["pad"]
    np.testing.assert_allclose(geom_d["source_affine"], geom_n["source_affine"], atol=1e-5)


def test_a_changed_series_is_reconverted_and_an_unchanged_one_skipped(tmp_path):
    hu, mask = hu_and_mask()
    dicom_case(tmp_path / "raw" / "p1", hu, mask, ras_affine())
    cfg = ConvertConfig(size=16, workers=1)
    convert(tmp_path / "raw", tmp_path / "s.zarr", cfg, progress=False)
    assert convert(tmp_path / "raw", tmp_path / "s.zarr", cfg, progress=False).skipped == ["p1"]
    (tmp_path / "raw" / "p1" / "CT0009.dcm").unlink()
    assert convert(tmp_path / "raw", tmp_path / "s.zarr", cfg, progress=False).converted == ["p1"]


def test_allow_tilt_converts_a_tilted_series_and_its_seg_onto_the_orthogonal_grid(tmp_path):
    hu, mask = hu_and_mask()
    tilted = ras_affine()
    tilted[:3, 2] = [0.0, 0.8, 2.5]  # each slice one row (0.8 mm) further anterior: 17.7 deg of gantry tilt
    shear = lambda volume, fill: np.stack([np.pad(volume[:, k:, k], ((0, 0), (0, k)), constant_values=fill)
                                           for k in range(volume.shape[2])], axis=2)
    dicom_case(tmp_path / "raw" / "p1", shear(hu, -1024.0), shear(mask, False), tilted)
    refused = convert(tmp_path / "raw", tmp_path / "a.zarr", ConvertConfig(size=16, workers=1), progress=False)
    assert "gantry tilt" in refused.failed[0]
    report = convert(tmp_path / "raw", tmp_path / "b.zarr", ConvertConfig(size=16, workers=1, allow_tilt=True),
                     progress=False)
    assert report.converted == ["p1"] and any("resampled onto an orthogonal grid" in n for n in report.notes)
    image = read_image(tmp_path / "raw" / "p1", allow_tilt=True)
    np.testing.assert_allclose(image.affine, ras_affine(), atol=1e-9)
    seg = read_case_mask(tmp_path / "raw" / "p1" / "seg.dcm", image)
    for k in range(hu.shape[2]):  # rows below k were outside the tilted slice: filled
        assert np.array_equal(image.data[:, k:, k], hu[:, k:, k]) and np.array_equal(seg[:, k:, k], mask[:, k:, k])


def test_verify_repair_reconverts_a_tilted_case_only_when_given_allow_tilt(tmp_path):
    hu, mask = hu_and_mask()
    tilted = ras_affine()
    tilted[:3, 2] = [0.0, 0.8, 2.5]  # one row per slice: gantry tilt
    dicom_case(tmp_path / "raw" / "p1", hu, mask, tilted)
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, allow_tilt=True), progress=False)
    healthy = SliceStore.open(tmp_path / "s.zarr").read_image_raw("p1")
    (tmp_path / "s.zarr" / "cases" / "p1" / "mask" / "zarr.json").unlink()  # damage the case
    args = ["verify", str(tmp_path / "s.zarr"), "--repair", str(tmp_path / "raw"), "--workers", "1"]
    refused = runner.invoke(prep_app, args)
    assert refused.exit_code == 1 and "gantry tilt" in refused.output
    fixed = runner.invoke(prep_app, [*args, "--allow-tilt"])
    assert fixed.exit_code == 0 and "1 cases checked, 0 damaged" in fixed.output, fixed.output
    assert np.array_equal(SliceStore.open(tmp_path / "s.zarr").read_image_raw("p1"), healthy)


def test_demo_dicom_set_converts_to_the_store_of_the_nifti_set(tmp_path):
    options = ["--cases", "4", "--size", "40", "--max-slices", "6", "--workers", "1"]
    for fmt in ("dicom", "nifti"):
        made = runner.invoke(prep_app, ["demo", str(tmp_path / fmt), "--format", fmt, *options])
        assert made.exit_code == 0, made.output
    converted = runner.invoke(prep_app, ["convert", str(tmp_path / "dicom"), str(tmp_path / "d.zarr"), "--size",
                                         "16", "--workers", "1"])
    assert converted.exit_code == 0, converted.output
    assert "dropped 1 localizer image(s)" in converted.output and "ignored 'axial thick" in converted.output
    convert(tmp_path / "nifti", tmp_path / "n.zarr", ConvertConfig(size=16, workers=1), progress=False)
    for case_id in ("demo_000", "demo_001", "demo_002", "demo_003"):
        (image_d, mask_d, _), (image_n, mask_n, _) = (stored(tmp_path / s, case_id) for s in ("d.zarr", "n.zarr"))
        assert np.array_equal(image_d, image_n) and np.array_equal(mask_d, mask_n)


def test_demo_dicom_set_is_byte_identical_for_the_same_options(tmp_path):
    from ctprep.demo import DemoConfig, make_demo

    cfg = DemoConfig(cases=4, size=32, max_slices=4, workers=1, format="dicom")
    for name in ("a", "b"):
        make_demo(tmp_path / name, cfg)
    files = {name: sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*") if p.is_file())
             for name in ("a", "b")}
    assert files["a"] == files["b"] and any(p.name == "seg.dcm" for p in files["a"])
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in files["a"])


def test_demo_dicom_refuses_the_nnunet_layout_and_several_raters():
    from ctprep.demo import DemoConfig

    for options in ({"layout": "nnunet"}, {"raters": 3}):
        with pytest.raises(UsageError, match="--format dicom writes one series folder per case"):
            DemoConfig(format="dicom", **options)
