"""Finding several annotators per case: COVID-19-20 NAME_seg_<rater>, QUBIQ folders, nnU-Net labelsTr/NAME_<rater>."""
from __future__ import annotations

from pathlib import Path

from ctprep.discover import find_cases
from ctprep.raters import natural_key, sorted_raters


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def masks_of(found) -> dict[str, dict[str, str]]:
    """case id -> {rater id: file name relative to nothing} for compact expectations."""
    return {case.case_id: {rater: path.name for rater, path in case.masks.items()} for case in found.cases}


def test_covid19_rater_files_become_raters_in_natural_order(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "a_seg_r10.nii.gz", "a_seg_r2.nii.gz", "a_seg_r1.nii.gz",
          "b_ct.nii.gz", "b_seg_A.nii.gz", "b_seg_1.nii.gz", "c_ct.nii.gz", "c_seg.nii.gz")
    found = find_cases(tmp_path)
    assert masks_of(found) == {
        "a": {"r1": "a_seg_r1.nii.gz", "r2": "a_seg_r2.nii.gz", "r10": "a_seg_r10.nii.gz"},
        "b": {"1": "b_seg_1.nii.gz", "A": "b_seg_A.nii.gz"},
        "c": {"1": "c_seg.nii.gz"},  # one unnamed mask: rater "1", kept as the case's mask_path
    }
    assert list(found.cases[0].masks) == ["r1", "r2", "r10"]
    assert found.cases[2].mask_path == tmp_path / "c_seg.nii.gz" and found.cases[0].mask_path is None
    assert found.problems == [] and found.orphans == []


def test_a_case_mixing_seg_and_seg_rater_is_a_problem_naming_the_files(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "a_seg.nii.gz", "a_seg_r1.nii.gz", "b_ct.nii.gz", "b_seg_r1.nii.gz")
    found = find_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["b"]  # the others convert
    (problem,) = found.problems
    assert "mixes an unnamed mask with rater masks" in problem
    assert "a_seg.nii.gz" in problem and "a_seg_r1.nii.gz" in problem


def test_one_rater_named_twice_is_a_problem(tmp_path):
    touch(tmp_path, "a_ct.nii.gz", "a_seg_r1.nii.gz", "a_seg_r1.nii")
    (problem,) = find_cases(tmp_path).problems
    assert "2 masks for rater 'r1'" in problem


def test_qubiq_case_folders_take_rater_ids_from_the_text_after_the_last_underscore(tmp_path):
    touch(tmp_path, "training/case01/image.nii.gz", "training/case01/task01_seg01.nii.gz",
          "training/case01/task01_seg02.nii.gz", "training/case01/task01_seg10.nii.gz",
          "training/case02/image.nii.gz", "training/case02/task01_seg01.nii.gz",
          "training/case03/image.nii.gz", "training/case03/notes.nii.gz")
    found = find_cases(tmp_path)
    assert masks_of(found) == {
        "case01": {"seg01": "task01_seg01.nii.gz", "seg02": "task01_seg02.nii.gz", "seg10": "task01_seg10.nii.gz"},
        "case02": {"seg01": "task01_seg01.nii.gz"},
        "case03": {},  # an image without *seg* files is unlabeled
    }
    assert found.problems == []


def test_qubiq_two_tasks_in_one_folder_clash_on_the_rater_id(tmp_path):
    touch(tmp_path, "p/image.nii.gz", "p/task01_seg01.nii.gz", "p/task02_seg01.nii.gz")
    (problem,) = find_cases(tmp_path).problems
    assert "2 masks for rater 'seg01'" in problem and "task02_seg01.nii.gz" in problem


def test_nnunet_label_raters_pair_with_channel_stripped_images(tmp_path):
    touch(tmp_path, "imagesTr/lung_1_0000.nii.gz", "labelsTr/lung_1_r1.nii.gz", "labelsTr/lung_1_r2.nii.gz",
          "imagesTr/lung_2_0000.nii.gz", "labelsTr/lung_2.nii.gz",
          "imagesTr/lung_3_0000.nii.gz", "labelsTr/lung_3_0000.nii.gz", "labelsTr/lung_3_0001.nii.gz")
    found = find_cases(tmp_path)
    assert masks_of(found) == {
        "lung_1": {"r1": "lung_1_r1.nii.gz", "r2": "lung_1_r2.nii.gz"},
        "lung_2": {"1": "lung_2.nii.gz"},
        # _0000 is a channel in imagesTr only: in labelsTr it is a rater like any other suffix
        "lung_3": {"0000": "lung_3_0000.nii.gz", "0001": "lung_3_0001.nii.gz"},
    }
    assert found.problems == [] and found.orphans == []


def test_an_exact_label_name_wins_over_a_rater_of_a_shorter_case(tmp_path):
    touch(tmp_path, "images/p.nii.gz", "images/p_2.nii.gz", "masks/p.nii.gz", "masks/p_2.nii.gz",
          "masks/q_1.nii.gz")
    found = find_cases(tmp_path)
    assert masks_of(found) == {"p": {"1": "p.nii.gz"}, "p_2": {"1": "p_2.nii.gz"}}
    assert found.orphans == [tmp_path / "masks/q_1.nii.gz"]


def test_natural_order_sorts_digit_runs_by_value():
    assert sorted_raters(["r10", "r2", "R1", "r1", "A", "seg02", "seg1"]) == \
        ["A", "R1", "r1", "r2", "r10", "seg1", "seg02"]
    assert natural_key("r2") < natural_key("r10")


def test_a_lone_name_suffixed_label_is_not_taken_for_a_rater(tmp_path):
    # the rule: NAME_<rater> files are raters "when more than one label file matches a case"
    touch(tmp_path, "imagesTr/lung_4_0000.nii.gz", "labelsTr/lung_4_r1.nii.gz",
          "imagesTr/lung_5_0000.nii.gz", "labelsTr/lung_5_r1.nii.gz", "labelsTr/lung_5_r2.nii.gz")
    found = find_cases(tmp_path)
    assert masks_of(found)["lung_5"] == {"r1": "lung_5_r1.nii.gz", "r2": "lung_5_r2.nii.gz"}
    assert masks_of(found).get("lung_4", {}) == {}  # no rater "r1": the file keeps its own name
    assert tmp_path / "labelsTr/lung_4_r1.nii.gz" in found.orphans
