"""`ctprep convert` / `ctprep info` through the CLI: exit codes, one-line errors naming the file, no tracebacks."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import phantom, ras_affine, save_nifti
from test_nifti import patch_header
from typer.testing import CliRunner

from cli import prep_app
from ctprep.errors import UsageError
from ctprep.lock import store_lock
from ctprep.store import FORMAT_VERSION, SliceStore
from ctprep.splits import SplitConfig, split_of

runner = CliRunner()


def write_good(raw: Path, seeds=(0, 1)) -> None:
    for seed in seeds:
        hu, lesion = phantom(seed=seed)
        save_nifti(raw / f"good{seed}_ct.nii.gz", hu, ras_affine(), dtype=np.int16, slope=1.0, inter=-1024.0)
        save_nifti(raw / f"good{seed}_seg.nii.gz", lesion.astype(np.uint8) * 255, ras_affine())


def truncated(raw: Path) -> Path:
    path = save_nifti(raw / "bad_ct.nii.gz", phantom()[0], ras_affine())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def not_nifti(raw: Path) -> Path:
    path = raw / "bad_ct.nii.gz"
    path.write_bytes(b"Access denied\n")
    return path


def four_d(raw: Path) -> Path:
    return save_nifti(raw / "bad_ct.nii.gz", np.zeros((23, 17, 9, 3), np.float32), ras_affine())


def two_d(raw: Path) -> Path:
    return save_nifti(raw / "bad_ct.nii", np.zeros((23, 17), np.float32), ras_affine())


def mask_shape(raw: Path) -> Path:
    save_nifti(raw / "bad_ct.nii.gz", phantom()[0], ras_affine())
    return save_nifti(raw / "bad_seg.nii.gz", np.zeros((23, 17, 10), np.uint8), ras_affine())


def mask_affine(raw: Path) -> Path:
    save_nifti(raw / "bad_ct.nii.gz", phantom()[0], ras_affine())
    return save_nifti(raw / "bad_seg.nii.gz", np.zeros((23, 17, 9), np.uint8), ras_affine((0.7, 0.8, 5.0)))


def absurd_header(raw: Path) -> Path:
    return patch_header(save_nifti(raw / "bad_ct.nii", np.zeros((4, 4, 4), np.int16), ras_affine()),
                        dim=(32000, 32000, 32000))


def zero_pixdim(raw: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None), str(raw / "bad_ct.nii"))
    return patch_header(raw / "bad_ct.nii", pixdim=(0.0, 0.0, 0.0))


def non_finite(raw: Path) -> Path:
    hu = phantom()[0]
    hu[5, 5, 5] = np.nan
    return save_nifti(raw / "bad_ct.nii.gz", hu, ras_affine())


def unsafe_name(raw: Path) -> Path:
    return save_nifti(raw / "bad name_ct.nii.gz", phantom()[0], ras_affine())


BAD_INPUTS = [truncated, not_nifti, four_d, two_d, mask_shape, mask_affine, absurd_header, zero_pixdim,
              non_finite, unsafe_name]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_bad_case_exits_1_with_one_line_naming_the_file_and_good_cases_convert(tmp_path, make_bad):
    raw = tmp_path / "raw"
    write_good(raw)
    bad = make_bad(raw)
    result = runner.invoke(prep_app, ["convert", str(raw), str(tmp_path / "s.zarr"), "--size", "16",
                                      "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    naming = [line for line in result.stderr.splitlines() if str(bad) in line]
    assert len(naming) == 1 and naming[0].startswith("failed: ")
    assert SliceStore.open(tmp_path / "s.zarr").case_ids() == ["good0", "good1"]


def test_good_folder_exits_0_and_prints_the_summary(tmp_path):
    write_good(tmp_path / "raw")
    result = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"),
                                      "--window", "-1000,400", "--size", "16", "--workers", "2"])
    assert result.exit_code == 0, result.output
    for word in ("converted", "skipped", "failed", "slices", "lesion slices", "empty:lesion", "store size",
                 "seconds"):
        assert word in result.stdout
    assert SliceStore.open(tmp_path / "s.zarr").case_ids() == ["good0", "good1"]


def test_info_shows_layout_counts_splits_and_size(tmp_path):
    write_good(tmp_path / "raw", seeds=range(6))
    runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"), "--size", "16",
                             "--workers", "1", "--test", "0.5"])
    result = runner.invoke(prep_app, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    index = SliceStore.open(tmp_path / "s.zarr").index()
    rows = [line.replace("│", " ").split() for line in result.stdout.splitlines()]
    assert ["format", "ctstack-slice-store", f"v{FORMAT_VERSION}"] in rows
    assert ["slices", str(len(index))] in rows
    assert ["lesion", "slices", str(int(index["has_lesion"].sum()))] in rows
    for split, part in index.groupby("split"):
        cases = part["case_id"].nunique()
        assert [split, str(cases), str(cases), "0", str(len(part)), str(int(part["has_lesion"].sum()))] in rows


def test_info_counts_labeled_and_unlabeled_cases_per_split_and_unlabeled_ones_stay_in_train(tmp_path):
    write_good(tmp_path / "raw", seeds=range(4))
    for seed in range(4, 8):  # images without a mask, as in an nnU-Net imagesTs folder
        save_nifti(tmp_path / "raw" / f"nomask{seed}_ct.nii.gz", phantom(seed=seed)[0], ras_affine())
    converted = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"), "--size", "16",
                                         "--workers", "1", "--test", "0.5", "--val", "0.5"])
    assert converted.exit_code == 0, converted.output
    result = runner.invoke(prep_app, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    per_case = SliceStore.open(tmp_path / "s.zarr").index().groupby("case_id").agg(
        split=("split", "first"), labeled=("labeled", "first"))
    unlabeled = per_case.index[~per_case["labeled"]]
    assert set(per_case.loc[unlabeled, "split"]) == {"train"}
    assert any(split_of(c, SplitConfig(test=0.5, val=0.5)) != "train" for c in unlabeled)  # the hash would not
    rows = [line.replace("│", " ").split() for line in result.stdout.splitlines()]
    split_rows = {row[0]: row[1:4] for row in rows if row and row[0] in ("train", "val", "test")}
    for split, part in per_case.groupby("split"):
        labeled = int(part["labeled"].sum())
        assert split_rows[split] == [str(len(part)), str(labeled), str(len(part) - labeled)]


def test_store_without_lesion_slices_says_so_instead_of_nan(tmp_path):
    for seed in range(2):
        hu, _lesion = phantom(seed=seed)
        save_nifti(tmp_path / "raw" / f"clear{seed}_ct.nii.gz", hu, ras_affine())
        save_nifti(tmp_path / "raw" / f"clear{seed}_seg.nii.gz", np.zeros(hu.shape, np.uint8), ras_affine())
    converted = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"), "--size", "16",
                                         "--workers", "1"])
    info = runner.invoke(prep_app, ["info", str(tmp_path / "s.zarr")])
    for result in (converted, info):
        assert result.exit_code == 0, result.output
        row = next(line for line in result.stdout.splitlines() if line.startswith("empty:lesion"))
        assert "no lesion slices" in row and "nan" not in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--window", "400,-1000"], "LO must be below HI"),
    (["--dtype", "int32"], "expected one of"),
    (["--test", "1.5"], "--test"),
])
def test_bad_options_exit_2(tmp_path, args, words):
    write_good(tmp_path / "raw", seeds=[0])
    result = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"), *args])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_missing_raw_folder_exits_2(tmp_path):
    result = runner.invoke(prep_app, ["convert", str(tmp_path / "nope"), str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "not a folder" in result.stderr


def test_locked_store_exits_1_with_one_line(tmp_path):
    write_good(tmp_path / "raw", seeds=[0])
    with store_lock(tmp_path / "s.zarr"):
        result = runner.invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "another ctprep/ctsample process is writing" in result.stderr


def test_debug_keeps_the_traceback(tmp_path):
    result = runner.invoke(prep_app, ["convert", str(tmp_path / "nope"), str(tmp_path / "s.zarr"), "--debug"])
    assert isinstance(result.exception, UsageError)


def test_info_on_missing_store_says_how_to_make_one(tmp_path):
    result = runner.invoke(prep_app, ["info", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 2 and "ctprep convert" in result.stderr and "Traceback" not in result.output
