"""`ctmodel evaluate` on DICOM cases scores on the native grid: a SEG or RTSTRUCT read onto the series' slices
(headers only), a tilted series as --allow-tilt resampled it, and a series changed since convert falls back to
the store grid with one line saying to re-convert (docs/dicom.md, "Evaluating DICOM cases")."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import phantom, ras_affine
from dicom_helpers import box, write_dicom, write_rtstruct

from ctmodel.evaluate import evaluate_cases
from ctprep.convert import ConvertConfig, convert
from ctprep.demo.dicom_writer import SeriesSpec, write_seg
from ctprep.readers import read_case_mask, read_image
from ctprep.store import SliceStore

STORED_LESION = lambda image: (np.asarray(image, dtype=np.float32) > 0.45).astype(np.float32)  # per voxel


def _converted(tmp_path, allow_tilt: bool = False) -> SliceStore:
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, allow_tilt=allow_tilt),
                     progress=False)
    assert report.failed == [] and report.converted == ["p1"]
    return SliceStore.open(tmp_path / "s.zarr")


def _voxel_ml(affine) -> float:
    return abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def test_an_rtstruct_case_is_scored_on_the_native_grid_against_its_rasterised_contours(tmp_path):
    hu, _ = phantom(seed=0)
    sources = write_dicom(tmp_path / "raw" / "p1", np.rint(hu), ras_affine(), names="shuffled")
    write_rtstruct(tmp_path / "raw" / "p1" / "rt.dcm", sources, [("GGO", "", [(k, box((2.5, 3.5), (10.5, 12.5)))
                                                                               for k in (3, 4, 5)])])
    (score,) = evaluate_cases(_converted(tmp_path), ["p1"], STORED_LESION, progress=False)
    assert score.grid == "native" and score.warning is None
    lesion_voxels = 8 * 9 * 3  # voxel centres inside the box: 8 columns x 9 rows on slices 3-5
    assert score.metrics.true_ml == pytest.approx(lesion_voxels * _voxel_ml(ras_affine()))


def test_a_tilted_case_is_scored_against_its_seg_resampled_as_at_convert(tmp_path):
    hu, mask = phantom(seed=0)
    tilted = ras_affine()
    tilted[:3, 2] = [0.0, 0.8, 2.5]  # one row per slice: gantry tilt
    sources = write_dicom(tmp_path / "raw" / "p1", np.rint(hu), tilted)
    write_seg(tmp_path / "raw" / "p1" / "seg.dcm", mask, sources, SeriesSpec(("test", "p1")))
    store = _converted(tmp_path, allow_tilt=True)
    (score,) = evaluate_cases(store, ["p1"], STORED_LESION, progress=False)
    image = read_image(tmp_path / "raw" / "p1", allow_tilt=True)
    truth = read_case_mask(tmp_path / "raw" / "p1" / "seg.dcm", image)
    assert score.grid == "native" and score.warning is None and truth.any()
    assert score.metrics.true_ml == pytest.approx(truth.sum() * _voxel_ml(image.affine))


def test_a_series_changed_since_convert_falls_back_to_the_store_grid_saying_re_convert(tmp_path):
    hu, mask = phantom(seed=0)
    sources = write_dicom(tmp_path / "raw" / "p1", np.rint(hu), ras_affine())
    write_seg(tmp_path / "raw" / "p1" / "seg.dcm", mask, sources, SeriesSpec(("test", "p1")))
    store = _converted(tmp_path)
    (tmp_path / "raw" / "p1" / f"CT{len(sources):04d}.dcm").unlink()  # the last slice is gone
    (score,) = evaluate_cases(store, ["p1"], STORED_LESION, progress=False)
    assert score.grid == "store" and "expected the series recorded at convert time" in score.warning
    assert "re-convert the case" in score.warning and "\n" not in score.warning
