"""DICOM through `ctmodel predict` and `ctmodel evaluate`: a DICOM series in, a DICOM SEG out that reads back as the
prediction and references the source series; NIfTI out from a DICOM series; native-grid scores of DICOM cases
equal those of the same cases in NIfTI (docs/dicom.md)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from dicom_helpers import pydicom, write_dicom  # noqa: E402  (skips the module without ctstack[dicom])

import highdicom as hd  # noqa: E402

from cli import model_app, prep_app  # noqa: E402
from conftest import one_line_error, ras_affine, save_nifti, save_random_run, to_lps  # noqa: E402
from ctmodel.dicom_seg import SERIES_NUMBER, SegAuthor  # noqa: E402
from ctmodel.evaluate import evaluate_cases  # noqa: E402
from ctmodel.metrics import dice  # noqa: E402
from ctmodel.predict import predict_paths  # noqa: E402
from ctmodel.scans import OutputFormat  # noqa: E402
from ctprep import geometry  # noqa: E402
from ctprep.convert import ConvertConfig, convert  # noqa: E402
from ctprep.dicom import read_series  # noqa: E402
from ctprep.dicom_files import SEG_CLASS  # noqa: E402
from ctprep.dicom_seg import read_seg_mask  # noqa: E402
from ctprep.errors import UsageError  # noqa: E402
from ctprep.preprocess import preprocess_mask  # noqa: E402
from ctprep.store import SliceStore, StoreLayout  # noqa: E402

runner = CliRunner()
SHAPE = (48, 40, 10)  # columns, rows, slices: non-square slices
SPACING = (0.7, 0.8, 2.5)
LAYOUT = StoreLayout(size=32)
SEG = OutputFormat("dicom-seg", author=SegAuthor("run-7", "best", 0.5))


def _case(affine: np.ndarray):
    """Integer HU with a lesion (radius 12 px on slices 3-6) and its mask, in RAS or LPS storage."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    lesion = ((x - 24) ** 2 + (y - 20) ** 2 <= 12**2) & (z >= 3) & (z < 7)
    hu = np.where(lesion, -300.0, -850.0) + 40.0 * np.sin(x / 3.0) * np.cos(y / 5.0)
    return np.rint(hu), lesion, affine


def _oracle(mask: np.ndarray, affine: np.ndarray, probability: float = 1.0):
    """A predictor returning the stored true mask (times ``probability``), whatever it is given."""
    stored = preprocess_mask(mask, geometry.describe(affine, mask.shape, LAYOUT.size)).astype(np.float32)
    return lambda volume: stored * np.float32(probability)


def _series(tmp_path: Path, orientation: str = "RAS", name: str = "p1") -> tuple[Path, np.ndarray, np.ndarray]:
    """A DICOM series folder of ``_case`` (RescaleIntercept -1024), its mask and affine."""
    hu, mask, affine = _case(ras_affine(SPACING))
    if orientation == "LPS":
        (hu, affine), (mask, _) = to_lps(hu, affine), to_lps(mask, affine)
    folder = tmp_path / "dicom" / name
    write_dicom(folder, hu, affine, intercept=-1024.0)
    return folder, mask, affine


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_dicom_seg_reads_back_as_the_prediction_of_the_same_volume_in_nifti(tmp_path, orientation):
    folder, mask, affine = _series(tmp_path, orientation)
    save_nifti(tmp_path / "p1.nii.gz", read_series(folder).data, affine)
    oracle = _oracle(mask, affine)
    report = predict_paths(folder, tmp_path / "out", oracle, LAYOUT, progress=False, out=SEG)
    assert report.failed == [] and [r.output.name for r in report.results] == ["p1.dcm"]
    predict_paths(tmp_path / "p1.nii.gz", tmp_path / "nifti.nii.gz", oracle, LAYOUT, progress=False)
    from_nifti = np.asarray(nib.load(tmp_path / "nifti.nii.gz").dataobj) != 0
    back = read_seg_mask(tmp_path / "out" / "p1.dcm", read_series(folder))  # frames matched by SOP Instance UID
    assert np.array_equal(back, from_nifti) and dice(back, mask) > 0.95


def test_dicom_seg_references_the_source_series_and_describes_one_lesion_segment(tmp_path):
    folder, mask, affine = _series(tmp_path)
    predict_paths(folder, tmp_path / "p1.dcm", _oracle(mask, affine), LAYOUT, progress=False, out=SEG)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    seg = pydicom.dcmread(tmp_path / "p1.dcm")  # plain pydicom reads it
    assert seg.SOPClassUID == SEG_CLASS and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID and seg.SeriesNumber == SERIES_NUMBER
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    source_uids = {ds.SOPInstanceUID for ds in sources}
    framed = {ref.ReferencedSOPInstanceUID for frame in seg.PerFrameFunctionalGroupsSequence
              for ref in frame.DerivationImageSequence[0].SourceImageSequence}
    assert framed <= source_uids and len(framed) == int(mask.any(axis=(0, 1)).sum())  # empty slices omitted
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "lesion" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # SCT "Morphologically abnormal structure"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "ctstack"
    assert hd.seg.segread(tmp_path / "p1.dcm").number_of_segments == 1


def test_fractional_seg_keeps_the_probabilities_to_one_255th(tmp_path):
    folder, mask, affine = _series(tmp_path)
    oracle = _oracle(mask, affine, probability=0.7)
    fractional = OutputFormat("dicom-seg", probabilities=True)
    predict_paths(folder, tmp_path / "p.dcm", oracle, LAYOUT, progress=False, out=fractional)
    predict_paths(folder, tmp_path / "p.nii.gz", oracle, LAYOUT, progress=False,
                  out=OutputFormat("nifti", probabilities=True))
    seg = hd.seg.segread(tmp_path / "p.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    volume = read_series(folder)
    frames = seg.get_pixels_by_source_instance(list(volume.instance_uids), ignore_spatial_locations=True,
                                               assert_missing_frames_are_empty=True)[..., 0]
    nifti = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    np.testing.assert_allclose(frames.transpose(2, 1, 0), nifti, atol=0.5 / 255 + 1e-6)
    assert abs(float(nifti.max()) - 0.7) < 1e-5


def test_a_dicom_series_predicted_as_nifti_lies_on_the_series_affine(tmp_path):
    folder, mask, affine = _series(tmp_path, "LPS")
    predict_paths(folder, tmp_path / "out", _oracle(mask, affine), LAYOUT, progress=False)
    written = nib.load(tmp_path / "out" / "p1.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)
    assert dice(np.asarray(written.dataobj) != 0, mask) > 0.95 and written.header.get_xyzt_units()[0] == "mm"


def test_a_folder_of_series_gives_one_seg_each_and_no_temp_files(tmp_path):
    for name in ("p1", "p2"):
        folder, mask, affine = _series(tmp_path, name=name)
    report = predict_paths(tmp_path / "dicom", tmp_path / "segs", _oracle(mask, affine), LAYOUT, progress=False,
                           out=SEG)
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["p1.dcm", "p2.dcm"] and not report.failed


def test_a_tilted_series_gets_its_seg_on_the_tilted_slices(tmp_path):
    hu, mask, _ = _case(ras_affine(SPACING))
    tilted = ras_affine(SPACING)
    tilted[:3, 2] = [0.0, 0.8, 2.5]  # each slice one row further anterior: gantry tilt
    shear = lambda volume, fill: np.stack([np.pad(volume[:, k:, k], ((0, 0), (0, k)), constant_values=fill)
                                           for k in range(volume.shape[2])], axis=2)
    folder = tmp_path / "dicom" / "p1"
    write_dicom(folder, shear(hu, -1024.0), tilted)
    upright = read_series(folder, allow_tilt=True)
    np.testing.assert_allclose(upright.affine, ras_affine(SPACING), atol=1e-9)
    oracle = _oracle(mask, upright.affine)
    predict_paths(folder, tmp_path / "p1.nii.gz", oracle, LAYOUT, progress=False, out=OutputFormat(allow_tilt=True))
    on_upright = np.asarray(nib.load(tmp_path / "p1.nii.gz").dataobj) != 0
    predict_paths(folder, tmp_path / "p1.dcm", oracle, LAYOUT, progress=False,
                  out=OutputFormat("dicom-seg", allow_tilt=True))
    seg = hd.seg.segread(tmp_path / "p1.dcm")
    frames = seg.get_pixels_by_source_instance(list(upright.instance_uids), ignore_spatial_locations=True,
                                               assert_missing_frames_are_empty=True)[..., 0]
    assert np.array_equal(frames.transpose(2, 1, 0) != 0, shear(on_upright, False))  # on the slices as acquired
    assert dice(on_upright, mask) > 0.95
    refused = predict_paths(folder, tmp_path / "q.dcm", oracle, LAYOUT, progress=False, out=SEG)
    assert "gantry tilt" in refused.failed[0] and not (tmp_path / "q.dcm").exists()


def test_dicom_seg_refuses_a_nifti_input_in_one_line_and_writes_nothing(tmp_path):
    hu, mask, affine = _case(ras_affine(SPACING))
    save_nifti(tmp_path / "scan.nii.gz", hu, affine)
    run = save_random_run(tmp_path / "run", LAYOUT)
    result = runner.invoke(model_app, ["predict", str(run), str(tmp_path / "scan.nii.gz"), str(tmp_path / "out"),
                                       "--format", "dicom-seg", "--device", "cpu"])
    assert result.exit_code == 2
    assert "needs DICOM series folders as INPUT, found a NIfTI file" in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_one_dicom_file_as_input_is_refused_naming_its_series_folder(tmp_path):
    folder, mask, affine = _series(tmp_path)
    with pytest.raises(UsageError, match=f"one DICOM file, expected a scan; pass its series folder {folder}"):
        predict_paths(folder / "CT0001.dcm", tmp_path / "out", _oracle(mask, affine), LAYOUT, progress=False)


def test_an_output_inside_the_series_folder_is_refused(tmp_path):
    folder, mask, affine = _series(tmp_path)
    with pytest.raises(UsageError, match="outside the DICOM series folder"):
        predict_paths(folder, folder, _oracle(mask, affine), LAYOUT, progress=False, out=SEG)
    assert not list(folder.glob("p1*"))


def test_cli_writes_a_seg_per_series_and_refuses_to_overwrite_it(tmp_path):
    _series(tmp_path)
    run = save_random_run(tmp_path / "run", LAYOUT)
    args = ["predict", str(run), str(tmp_path / "dicom"), str(tmp_path / "segs"), "--format", "dicom-seg",
            "--device", "cpu", "--probabilities"]
    first = runner.invoke(model_app, args)
    assert first.exit_code == 0, first.output
    seg = pydicom.dcmread(tmp_path / "segs" / "p1.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.ContentDescription.startswith("ctstack run")
    again = runner.invoke(model_app, args)
    assert again.exit_code == 1 and "pass --overwrite" in one_line_error(again)
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["p1.dcm"]


def test_native_grid_scores_of_a_dicom_store_equal_those_of_the_nifti_store(tmp_path):
    options = ["--cases", "3", "--size", "40", "--max-slices", "6", "--workers", "1"]
    for fmt in ("dicom", "nifti"):
        made = runner.invoke(prep_app, ["demo", str(tmp_path / fmt), "--format", fmt, *options])
        assert made.exit_code == 0, made.output
        report = convert(tmp_path / fmt, tmp_path / f"{fmt}.zarr", ConvertConfig(size=16, workers=1), progress=False)
        assert report.failed == []
    predictor = lambda image: (np.asarray(image, dtype=np.float32) > 0.45).astype(np.float32)  # per voxel
    scores = {}
    for fmt in ("dicom", "nifti"):
        store = SliceStore.open(tmp_path / f"{fmt}.zarr")
        scores[fmt] = evaluate_cases(store, ["demo_000", "demo_001", "demo_002"], predictor, progress=False)
    assert all(s.grid == "native" and s.warning is None for s in scores["dicom"] + scores["nifti"])
    for d, n in zip(scores["dicom"], scores["nifti"]):
        assert d.metrics.dice == pytest.approx(n.metrics.dice) and d.metrics.true_ml == pytest.approx(n.metrics.true_ml)
        assert d.metrics.true_ml > 0


def test_each_seg_frame_lies_at_its_source_slice_position(tmp_path):
    folder, mask, affine = _series(tmp_path, "LPS")
    predict_paths(folder, tmp_path / "p1.dcm", _oracle(mask, affine), LAYOUT, progress=False, out=SEG)
    position = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient]
                for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm"))}
    seg = pydicom.dcmread(tmp_path / "p1.dcm")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        placed = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(placed, position[source], atol=1e-4)


def test_an_anonymised_series_still_gets_a_seg_and_one_without_frame_of_reference_fails_alone(tmp_path):
    from dicom_helpers import edit_slices

    for name in ("a", "b"):
        folder, mask, affine = _series(tmp_path, name=name)
    stripped = ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "AccessionNumber", "SliceThickness")
    edit_slices(tmp_path / "dicom" / "b", lambda ds, k: [delattr(ds, kw) for kw in stripped if kw in ds])
    edit_slices(tmp_path / "dicom" / "a", lambda ds, k: delattr(ds, "FrameOfReferenceUID"))
    report = predict_paths(tmp_path / "dicom", tmp_path / "segs", _oracle(mask, affine), LAYOUT, progress=False,
                           out=SEG)
    assert [r.output.name for r in report.results] == ["b.dcm"] and len(report.failed) == 1
    assert "expected FrameOfReferenceUID in the series' headers" in report.failed[0]
    assert "\n" not in report.failed[0] and not (tmp_path / "segs" / "a.dcm").exists()
    assert float(pydicom.dcmread(tmp_path / "segs" / "b.dcm").SharedFunctionalGroupsSequence[0]
                 .PixelMeasuresSequence[0].SliceThickness) == pytest.approx(SPACING[2])


@pytest.mark.parametrize("args, message", [
    (["--format", "dicom-seg", "OUT/x.nii.gz"], "a nifti file name, but --format dicom-seg writes a .dcm file"),
    (["OUT/x.dcm"], "a dicom-seg file name, but --format nifti writes a .nii or .nii.gz file"),
    (["--format", "dicom-seg", "OUT/notes.txt"], "expected an OUTPUT folder or a dicom-seg file, found another file"),
    (["--format", "bogus", "OUT/segs"], "--format bogus: expected one of nifti, dicom-seg"),
    (["--format", "dicom-seg", "--uncertainty", "OUT/segs"], "--uncertainty writes a NIfTI band map"),
])
def test_bad_output_options_are_refused_in_one_line_before_anything_is_written(tmp_path, args, message):
    _series(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    run = save_random_run(tmp_path / "run", LAYOUT)
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    options, output = args[:-1], args[-1]
    result = runner.invoke(model_app, ["predict", str(run), str(tmp_path / "dicom"), output, *options])
    assert result.exit_code == 2 and message in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom", "notes.txt", "run"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_folder_of_segs_is_not_a_series_so_predicting_into_input_can_be_repeated(tmp_path):
    folder, mask, affine = _series(tmp_path)
    for _ in range(2):
        report = predict_paths(tmp_path / "dicom", tmp_path / "dicom" / "segs", _oracle(mask, affine), LAYOUT,
                               progress=False, out=SEG, overwrite=True)
        assert [r.output.name for r in report.results] == ["p1.dcm"] and not report.failed
