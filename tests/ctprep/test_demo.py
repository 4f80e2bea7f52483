"""The demo generator: files laid out and encoded as real datasets ship them, plausible anatomy, lesion balance."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from cli import prep_app
from ctprep.demo import DemoConfig, case_affine, make_demo, storage_of
from ctprep.demo.anatomy import draw_patient, lung_frame, to_pixel
from ctprep.demo.phantom import make_phantom
from ctprep.demo.vessels import draw_vessel_points
from ctprep.discover import find_cases
from ctprep.errors import UsageError

QUICK = dict(size=64, max_slices=24, workers=1)


@pytest.fixture(scope="module")
def quick_set(tmp_path_factory) -> tuple[Path, object]:
    """Six small cases (covid19 layout): every storage style appears."""
    out = tmp_path_factory.mktemp("demo") / "raw"
    return out, make_demo(out, DemoConfig(cases=6, seed=3, **QUICK))


@pytest.fixture(scope="module")
def full_length_set(tmp_path_factory) -> tuple[Path, object]:
    """The default 12 cases with their real slice counts, small in-plane (slice counts do not depend on it)."""
    out = tmp_path_factory.mktemp("demo12") / "raw"
    return out, make_demo(out, DemoConfig(cases=12, seed=0, size=64, workers=1))


def load(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    cfg = DemoConfig(cases=2, seed=5, **QUICK)
    make_demo(tmp_path / "a", cfg)
    make_demo(tmp_path / "b", cfg)
    make_demo(tmp_path / "c", DemoConfig(cases=2, seed=6, **QUICK))
    a, b, c = (file_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_parallel_run_writes_the_same_files_as_in_process(tmp_path):
    cfg = dict(cases=2, seed=1, size=32, max_slices=8)
    make_demo(tmp_path / "serial", DemoConfig(**cfg, workers=1))
    make_demo(tmp_path / "parallel", DemoConfig(**cfg, workers=2))
    assert file_bytes(tmp_path / "serial") == file_bytes(tmp_path / "parallel")


def test_covid19_layout_is_found_and_paired_by_discovery(quick_set):
    out, cases = quick_set
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{c}_ct.nii.gz" for c in cases.case_id] + [f"{c}_seg.nii.gz" for c in cases.case_id])
    found = find_cases(out)
    assert [c.case_id for c in found.cases] == list(cases.case_id)
    assert all(c.mask_path is not None for c in found.cases) and not found.orphans and not found.problems


def test_nnunet_layout_has_labeled_train_cases_and_unlabeled_test_cases(tmp_path):
    cases = make_demo(tmp_path, DemoConfig(cases=8, layout="nnunet", size=32, max_slices=6, workers=1))
    train = sorted(p.name for p in (tmp_path / "imagesTr").iterdir())
    labels = sorted(p.name for p in (tmp_path / "labelsTr").iterdir())
    test = sorted(p.name for p in (tmp_path / "imagesTs").iterdir())
    assert len(test) == 2 and len(train) == len(labels) == 6
    assert [n.replace("_0000", "") for n in train] == labels
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 6
    found = find_cases(tmp_path)
    assert sum(c.mask_path is None for c in found.cases) == 2 == int((~cases.labeled).sum())


def test_images_are_int16_with_scaling_as_shipped_and_masks_uint8_zero_one(quick_set):
    _, cases = quick_set
    for row in cases.itertuples():
        img = nib.load(row.image)
        raw = np.asarray(img.dataobj.get_unscaled())
        assert img.get_data_dtype() == np.int16
        if "scl_inter=-1024" in row.storage:
            assert (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
            inside_fov = raw[raw != -2000]  # stored 0.. except the FOV padding (-3024 HU)
            assert inside_fov.min() >= 0
        else:
            assert (img.dataobj.slope, img.dataobj.inter) == (1.0, 0.0) and raw.min() >= -3024
        mask, mask_img = load(row.mask)
        assert mask_img.get_data_dtype() == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.shape == img.shape == row.shape
        np.testing.assert_array_equal(mask_img.affine, img.affine)


@given(seed=st.integers(0, 2**40), start=st.integers(0, 1000))
def test_any_three_consecutive_cases_include_an_lps_case_with_fov_padding(seed, start):
    assert any(storage_of(seed, i).lps and storage_of(seed, i).fov_padding for i in range(start, start + 3))


def test_lps_case_is_the_same_anatomy_as_its_ras_rendering(quick_set):
    _, cases = quick_set
    lps_rows = [row for row in cases.itertuples() if row.orientation == "LPS"]
    assert lps_rows
    for row in lps_rows:
        img = nib.load(row.image)
        assert img.affine[0, 0] < 0 and img.affine[1, 1] < 0 and nib.aff2axcodes(img.affine) == ("L", "P", "S")
        canonical = nib.as_closest_canonical(img)
        phantom = make_phantom(3, int(row.case_id[-3:]), 64, 24)
        np.testing.assert_allclose(canonical.affine, case_affine(phantom, lps=False), atol=1e-6)
        hu = np.asarray(canonical.dataobj).T  # (Z, Y, X) like the phantom
        padded = hu == -3024
        assert padded[:, 0, 0].all() and not padded[:, 32, 32].any()  # corners outside the FOV circle
        np.testing.assert_array_equal(hu[~padded], phantom.hu[~padded])


def test_hu_of_air_lung_bone_and_lesions_is_plausible(quick_set):
    _, cases = quick_set
    for row in cases.itertuples():
        hu, img = load(row.image)
        hu = np.asarray(nib.as_closest_canonical(img).dataobj).T  # (Z, Y, X), RAS
        mask = np.asarray(nib.as_closest_canonical(nib.load(row.mask)).dataobj).T
        phantom = make_phantom(3, int(row.case_id[-3:]), 64, 24)
        p = phantom.patient
        edge = hu[:, -1, :]  # anterior edge of the matrix
        assert abs(np.median(edge[edge > -2000]) + 1000) < 15  # air (outside the FOV circle: -3024)
        mid = p.n_slices // 2
        cx, cy, ax, ay = (float(v) for v in lung_frame(p, 0, p.z_mm(mid)))
        r, c = int(to_pixel(p, cy + 0.4 * ay)), int(to_pixel(p, cx + 0.3 * ax))
        assert -920 < np.median(hu[mid, r - 2:r + 3, c - 2:c + 3]) < -760  # right lung, anterior
        assert 400 <= np.percentile(hu, 99.95) <= 1100  # bone
        r, c = int(to_pixel(p, 0.2 * p.inner_b_mm)), int(to_pixel(p, -0.3 * p.inner_a_mm))
        abdomen = hu[0, r - 3:r + 4, c - 3:c + 4]  # left upper abdomen on the lowest slice: soft tissue
        assert abs(abdomen.mean() - 40) < 12 and 14 < abdomen.std() < 26  # +40 HU, noise sigma 20 HU
        if mask.any():
            lesion = hu[mask == 1]
            assert np.mean((lesion > -780) & (lesion < 130)) > 0.99  # GGO -700..-300, consolidation -100..50


def test_lesions_lie_inside_lung(tmp_path):
    cases = make_demo(tmp_path, DemoConfig(cases=4, seed=3, size=128, max_slices=40, workers=1))
    for row in cases.itertuples():
        hu, _ = load(row.image)
        mask, _ = load(row.mask)
        rings = []
        for z in np.flatnonzero(mask.any(axis=(0, 1))):
            lesion = mask[:, :, z] == 1
            ring = hu[:, :, z][ndimage.binary_dilation(lesion, iterations=2) & ~lesion]
            assert (ring < -700).any(), (row.case_id, z)  # every lesion slice borders aerated lung
            rings.append(ring)
        if rings:
            assert np.median(np.concatenate(rings)) < -500, row.case_id


def test_slice_counts_and_ratios_reported_match_the_written_masks(full_length_set):
    _, cases = full_length_set
    for row in cases.itertuples():
        mask, _ = load(row.mask)
        lesion_slices = int(mask.any(axis=(0, 1)).sum())
        assert (row.lesion_slices, row.empty_slices) == (lesion_slices, mask.shape[2] - lesion_slices)


def test_default_set_has_the_source_studys_imbalance_and_patients_that_differ(full_length_set):
    _, cases = full_length_set
    ratio = cases.empty_slices.sum() / cases.lesion_slices.sum()
    assert 1.5 <= ratio <= 2.1
    assert cases.pct_empty.min() <= 62 and cases.pct_empty.max() >= 80
    assert cases.n_lesions.max() <= 6 and (cases.n_lesions >= 1).sum() >= 10
    assert set(",".join(cases.lesion_kinds).split(",")) >= {"ggo", "consolidation"}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_drawn_geometry_is_in_clinical_ranges(seed):
    p = draw_patient(np.random.default_rng(seed), 512, None)
    assert 0.6 <= p.pixel_mm <= 0.9 and 1.0 <= p.slice_mm <= 5.0 and 40 <= p.n_slices <= 200


def test_max_slices_thickens_slices_and_keeps_the_whole_chest():
    full = draw_patient(np.random.default_rng(7), 64, None)
    capped = draw_patient(np.random.default_rng(7), 64, 24)
    assert capped.n_slices == 24 < full.n_slices
    assert capped.n_slices * capped.slice_mm == pytest.approx(full.n_slices * full.slice_mm)


def test_vessel_trees_run_through_most_of_the_lung_height():
    p = draw_patient(np.random.default_rng(2), 512, None)
    points = draw_vessel_points(np.random.default_rng(3), p)
    heights = points[:, 2]
    assert heights.max() - heights.min() > 0.8 * (p.lung_top_mm - p.lung_bottom_mm)
    assert 0.5 < points[:, 3].min() < 1.0 and points[:, 3].max() > 3.0  # tapering tubes, mm


def test_non_empty_out_dir_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="empty or new folder"):
        make_demo(tmp_path, DemoConfig(cases=1, **QUICK))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_out_dir_that_cannot_be_created_is_one_usage_error(tmp_path):
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(UsageError, match="cannot create the folder"):
        make_demo(tmp_path / "file.txt" / "raw", DemoConfig(cases=1, **QUICK))


@pytest.mark.parametrize("bad", [dict(layout="msd"), dict(size=16), dict(cases=0), dict(max_slices=2), dict(seed=-1)])
def test_bad_options_raise_usage_error(bad):
    with pytest.raises(UsageError):
        DemoConfig(**bad)


def test_cli_writes_the_set_and_prints_the_summary(tmp_path):
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), "--cases", "2", "--size", "32",
                                           "--max-slices", "6", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "empty : lesion" in result.output and "per-patient % empty" in result.output
    assert len(list((tmp_path / "raw").glob("*_ct.nii.gz"))) == 2


@pytest.mark.parametrize("args", [["--layout", "msd"], ["--cases", "0"], ["--size", "abc"]])
def test_cli_bad_arguments_exit_2_without_traceback(tmp_path, args):
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_cli_refuses_a_non_empty_folder_with_one_line(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path), "--size", "32"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "expected an empty or new folder" in result.output
