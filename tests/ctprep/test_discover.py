"""Finding and pairing cases in the layouts real datasets ship: COVID-19-20, nnU-Net/MSD, images/+masks/."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctprep.discover import CaseSource, find_cases
from ctprep.errors import UsageError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_covid19_20_pairs_ct_with_seg_in_nested_folders_and_both_suffixes(tmp_path):
    touch(tmp_path, "Train/volume-covid19-A-0003_ct.nii.gz", "Train/volume-covid19-A-0003_seg.nii.gz",
          "Train/volume-covid19-A-0011_ct.nii", "Train/volume-covid19-A-0011_seg.nii.gz",
          "Validation/volume-covid19-A-0014_ct.nii.gz")
    found = find_cases(tmp_path)
    assert found.cases == [
        CaseSource("volume-covid19-A-0003", tmp_path / "Train/volume-covid19-A-0003_ct.nii.gz",
                   tmp_path / "Train/volume-covid19-A-0003_seg.nii.gz"),
        CaseSource("volume-covid19-A-0011", tmp_path / "Train/volume-covid19-A-0011_ct.nii",
                   tmp_path / "Train/volume-covid19-A-0011_seg.nii.gz"),
        CaseSource("volume-covid19-A-0014", tmp_path / "Validation/volume-covid19-A-0014_ct.nii.gz", None),
    ]
    assert found.orphans == [] and found.problems == []


def test_nnunet_strips_channel_0000_and_keeps_imagesTs_unlabeled(tmp_path):
    touch(tmp_path, "imagesTr/lung_001_0000.nii.gz", "labelsTr/lung_001.nii.gz",
          "imagesTr/lung_003_0000.nii.gz", "labelsTr/lung_003.nii.gz", "imagesTs/lung_002_0000.nii.gz")
    found = find_cases(tmp_path)
    assert [(c.case_id, c.mask_path is not None) for c in found.cases] == [
        ("lung_001", True), ("lung_002", False), ("lung_003", True)]
    assert found.cases[0].image_path == tmp_path / "imagesTr/lung_001_0000.nii.gz"


def test_msd_images_without_channel_suffix_pair_by_name(tmp_path):
    touch(tmp_path, "imagesTr/lung_0001.nii.gz", "labelsTr/lung_0001.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["lung_0001"]  # no _0000 in the folder: 0001 is part of the name
    assert found.cases[0].mask_path == tmp_path / "labelsTr/lung_0001.nii.gz"


def test_extra_nnunet_channel_is_reported_not_converted(tmp_path):
    touch(tmp_path, "imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz", "labelsTr/a.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["a"]
    assert len(found.problems) == 1 and "a_0001.nii.gz" in found.problems[0]


@pytest.mark.parametrize("mask_dir", ["masks", "labels"])
def test_images_folder_pairs_with_masks_or_labels(tmp_path, mask_dir):
    touch(tmp_path, "images/p1.nii.gz", f"{mask_dir}/p1.nii.gz", "images/p2.nii")
    found = find_cases(tmp_path)
    assert found.cases == [CaseSource("p1", tmp_path / "images/p1.nii.gz", tmp_path / f"{mask_dir}/p1.nii.gz"),
                           CaseSource("p2", tmp_path / "images/p2.nii", None)]


def test_mask_without_image_is_an_orphan(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "a_seg.nii.gz", "b_seg.nii.gz", "labelsTr/c.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["a"]
    assert found.orphans == [tmp_path / "b_seg.nii.gz", tmp_path / "labelsTr/c.nii.gz"]


def test_same_case_as_nii_and_nii_gz_is_a_problem_not_a_guess(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "a_ct.nii", "b_ct.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["b"]
    assert len(found.problems) == 1 and "has 2 images" in found.problems[0]


@pytest.mark.parametrize("name", ["bad name", "-dash", "ünï"])
def test_unsafe_case_ids_are_refused_with_the_file_named(tmp_path, name):
    touch(tmp_path, f"{name}_ct.nii.gz", "ok_ct.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["ok"]
    assert len(found.problems) == 1 and f"{name}_ct.nii.gz" in found.problems[0]


def test_hidden_and_non_nifti_files_are_ignored(tmp_path):
    touch(tmp_path, "._a_ct.nii.gz", "a_ct.nii.gz", "README.txt", "a_ct.nii.gz.md5")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["a"] and found.problems == []


def test_unrecognised_top_level_nifti_is_reported(tmp_path):
    touch(tmp_path, "scan.nii.gz")
    found = find_cases(tmp_path)
    assert found.cases == [] and "scan.nii.gz: not a recognised name" in found.problems[0]


def test_missing_raw_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        find_cases(tmp_path / "nope")


def test_a_case_id_with_a_trailing_newline_is_refused(tmp_path):
    touch(tmp_path, "images/evil\n.nii.gz", "images/good.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["good"]
    assert len(found.problems) == 1 and "'evil\\n'" in found.problems[0] and "not a safe name" in found.problems[0]


def test_entries_that_are_not_regular_files_are_reported_as_skipped_with_the_reason(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "._a_ct.nii.gz")
    os.mkfifo(tmp_path / "fifo_ct.nii.gz")
    (tmp_path / "dev_ct.nii.gz").symlink_to("/dev/null")
    (tmp_path / "gone_ct.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("not NIfTI: neither read nor reported")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["a"]
    assert sorted(found.skipped) == sorted([
        f"{tmp_path / '._a_ct.nii.gz'}: skipped, hidden name (a dot file, e.g. macOS ._ metadata)",
        f"{tmp_path / 'fifo_ct.nii.gz'}: skipped, a FIFO (named pipe), not a file",
        f"{tmp_path / 'dev_ct.nii.gz'}: skipped, a link to a device, not a file",
        f"{tmp_path / 'gone_ct.nii.gz'}: skipped, a link to a missing file",
    ])
