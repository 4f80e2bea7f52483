"""ctmodel predict: masks come back on the source grid (shape, affine, header codes) for any orientation."""
from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from cli import model_app
from ctmodel.metrics import dice
from ctmodel.predict import output_name, predict_paths
from ctprep import geometry
from ctprep.discover import find_cases
from ctprep.preprocess import prepare_input, preprocess_mask
from ctprep.store import SliceStore, StoreLayout
from conftest import build_store, phantom, ras_affine, save_nifti, save_random_run, to_lps, to_permuted

SHAPE = (96, 80, 12)  # x, y, z: non-square slices
SPACING = (0.7, 0.8, 2.5)
LAYOUT = StoreLayout(size=64)


def _case():
    """HU volume with a large lesion (radius 20 px, 6 slices) and its mask, RAS."""
    hu, _ = phantom(SHAPE, seed=1)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    lesion = ((x - 50) ** 2 + (y - 38) ** 2 <= 20**2) & (z >= 3) & (z < 9)
    hu[lesion] = -300.0
    return hu, lesion, ras_affine(SPACING)


def _oracle(mask: np.ndarray, affine: np.ndarray):
    """A predictor that returns the stored (preprocessed) true mask, whatever it is given."""
    stored = preprocess_mask(mask, geometry.describe(affine, mask.shape, LAYOUT.size)).astype(np.float32)

    def predictor(volume: np.ndarray) -> np.ndarray:
        assert volume.shape == stored.shape
        return stored

    return predictor


def _variants(hu, mask, affine):
    """RAS, LPS and permuted-axis (slices first) versions of the same anatomy."""
    lps_hu, lps_affine = to_lps(hu, affine)
    lps_mask, _ = to_lps(mask, affine)
    perm_hu, perm_affine = to_permuted(hu, affine)
    perm_mask, _ = to_permuted(mask, affine)
    return {"ras": (hu, mask, affine), "lps": (lps_hu, lps_mask, lps_affine), "permuted": (perm_hu, perm_mask, perm_affine)}


@pytest.mark.parametrize("orientation", ["ras", "lps", "permuted"])
def test_oracle_prediction_reproduces_the_source_mask_in_the_source_geometry(tmp_path, orientation):
    hu, mask, affine = _variants(*_case())[orientation]
    source = save_nifti(tmp_path / f"{orientation}.nii.gz", hu, affine, dtype=np.int16)
    report = predict_paths(source, tmp_path / "out.nii.gz", _oracle(*_case()[1:]), LAYOUT, progress=False)
    assert not report.failed
    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert written.shape == hu.shape
    np.testing.assert_allclose(written.affine, affine)
    assert written.get_data_dtype() == np.uint8
    result = np.asarray(written.dataobj)
    assert set(np.unique(result)) <= {0, 1}
    assert dice(result, mask) >= 0.95
    assert report.results[0].lesion_ml == pytest.approx(mask.sum() * np.prod(SPACING) / 1000, rel=0.05)


def test_output_keeps_qform_and_sform_codes_and_drops_intensity_scaling(tmp_path):
    hu, mask, affine = _case()
    img = nib.Nifti1Image(np.rint(hu + 1024).astype(np.int16), affine)
    img.header.set_slope_inter(1.0, -1024.0)  # stored as HU + 1024, as DICOM-derived NIfTI often are
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    nib.save(img, str(tmp_path / "scan.nii.gz"))
    predict_paths(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz", _oracle(mask, affine), LAYOUT, progress=False)
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    assert written.header.get_qform(coded=True)[1] == 1 and written.header.get_sform(coded=True)[1] == 2
    np.testing.assert_allclose(written.header.get_qform(), img.header.get_qform(), atol=1e-5)
    assert np.array_equal(written.get_fdata(), np.asarray(written.dataobj))  # no slope/inter left on the mask
    assert dice(np.asarray(written.dataobj), mask) >= 0.95


def test_probabilities_are_written_as_float32_in_unit_range(tmp_path):
    hu, mask, affine = _case()
    source = save_nifti(tmp_path / "scan.nii.gz", hu, affine)
    predict_paths(source, tmp_path / "p.nii.gz", _oracle(mask, affine), LAYOUT, probabilities=True, progress=False)
    written = nib.load(str(tmp_path / "p.nii.gz"))
    probs = np.asarray(written.dataobj)
    assert written.get_data_dtype() == np.float32 and probs.shape == hu.shape
    assert probs.min() >= 0.0 and probs.max() <= 1.0 and 0.0 < probs.mean() < 1.0


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_network_input_is_exactly_what_the_store_holds(tmp_path, dtype):
    hu, mask, affine = _case()
    layout = StoreLayout(size=64, dtype=dtype)
    store = SliceStore.open(build_store(tmp_path / "s.zarr", {"c": (hu, mask, affine)}, {"c": "test"}, layout))
    lps_hu, lps_affine = to_lps(hu, affine)
    network_input, _ = prepare_input(lps_hu, lps_affine, layout)
    assert np.array_equal(network_input, store.read_image("c"))


def test_nnunet_channel_suffix_is_dropped():
    assert output_name(Path("case_001_0000.nii.gz")) == "case_001.nii.gz"
    assert output_name(Path("lung_7.nii")) == "lung_7.nii"
    assert output_name(Path("a_0000_0000.nii.gz")) == "a_0000.nii.gz"


@settings(max_examples=40, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True), gz=st.booleans())
def test_a_prediction_is_named_after_the_case_convert_finds_in_the_same_file(name, gz):
    suffix = ".nii.gz" if gz else ".nii"
    with tempfile.TemporaryDirectory() as raw:  # one folder per example: tmp_path is shared by all of them
        scan = Path(raw) / "imagesTs" / f"{name}_0000{suffix}"
        scan.parent.mkdir()
        scan.write_bytes(b"")  # discovery reads names only
        (case,) = find_cases(Path(raw)).cases
        assert output_name(scan) == case.case_id + suffix


def test_folder_with_a_corrupt_scan_predicts_the_others_and_names_the_bad_one(tmp_path):
    hu, mask, affine = _case()
    for name in ("a_0000", "b_0000"):
        save_nifti(tmp_path / "in" / f"{name}.nii.gz", hu, affine, dtype=np.int16)
    (tmp_path / "in" / "bad_0000.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")
    report = predict_paths(tmp_path / "in", tmp_path / "out", _oracle(mask, affine), LAYOUT, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert len(report.failed) == 1 and "bad_0000.nii.gz" in report.failed[0]


def test_cli_folder_run_with_corrupt_file_exits_1_with_one_line(tmp_path):
    hu, _, affine = _case()
    run = save_random_run(tmp_path / "run", LAYOUT)
    lps_hu, lps_affine = to_lps(hu, affine)
    save_nifti(tmp_path / "in" / "good_0000.nii.gz", lps_hu, lps_affine, dtype=np.int16)
    (tmp_path / "in" / "broken_0000.nii").write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(model_app, ["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"),
                                            "--device", "cpu", "--batch-size", "4"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if "broken_0000.nii" in line]
    assert len(failed) == 1
    written = nib.load(str(tmp_path / "out" / "good.nii.gz"))
    assert written.shape == lps_hu.shape and np.allclose(written.affine, lps_affine)


def test_cli_refuses_a_missing_run_with_one_line(tmp_path):
    hu, _, affine = _case()
    source = save_nifti(tmp_path / "scan.nii.gz", hu, affine)
    result = CliRunner().invoke(model_app, ["predict", str(tmp_path / "nope"), str(source), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nope" in result.output and len(result.output.strip().splitlines()) == 1


def test_demo_scan_with_lps_scaling_and_fov_padding_comes_back_aligned(tmp_path):
    from ctprep.demo import DemoConfig, write_demo_case

    row = write_demo_case(tmp_path / "raw", DemoConfig(cases=4, size=128, max_slices=16, workers=1), 1)
    assert row["orientation"] == "LPS" and "-3024" in row["storage"]  # the quirks this test is about
    source_mask = nib.load(row["mask"])
    truth = np.asarray(source_mask.dataobj) != 0
    layout = StoreLayout(size=96)
    stored = preprocess_mask(truth, geometry.describe(source_mask.affine, truth.shape, layout.size))
    predict_paths(Path(row["image"]), tmp_path / "out.nii.gz", lambda volume: stored.astype(np.float32), layout,
                  progress=False)
    written, image = nib.load(str(tmp_path / "out.nii.gz")), nib.load(row["image"])
    assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    assert dice(np.asarray(written.dataobj), truth) >= 0.9  # a ~300-voxel lesion resized 128 -> 96 -> 128
