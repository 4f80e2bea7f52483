"""`ctprep demo --unlabeled N`: N extra scans drawn like the labeled ones, written without masks in the layout's
own way, numbered after the labeled cases; the files of the set without them keep every byte."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.demo.writer import unlabeled_count
from ctprep.index import read_index

QUICK = dict(size=32, max_slices=4, workers=1)


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["covid19", "nnunet"])
def test_a_set_without_unlabeled_keeps_its_bytes_and_the_extras_only_add_files(tmp_path, layout):
    make_demo(tmp_path / "zero", DemoConfig(cases=4, layout=layout, unlabeled=0, **QUICK))
    plain = digests(tmp_path / "zero")
    make_demo(tmp_path / "default", DemoConfig(cases=4, layout=layout, **QUICK))
    make_demo(tmp_path / "extra", DemoConfig(cases=4, layout=layout, unlabeled=2, **QUICK))
    extra = digests(tmp_path / "extra")
    assert digests(tmp_path / "default") == plain
    assert {name: extra[name] for name in plain} == plain  # dataset.json included: numTraining is unchanged
    assert len(extra) == len(plain) + 2


def test_covid19_extras_are_images_without_a_seg_file(tmp_path):
    rows = make_demo(tmp_path, DemoConfig(cases=2, unlabeled=2, **QUICK))
    assert list(rows["case_id"]) == ["demo_000", "demo_001", "demo_002", "demo_003"]
    assert list(rows["labeled"]) == [True, True, False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo_000_ct.nii.gz", "demo_000_seg.nii.gz", "demo_001_ct.nii.gz", "demo_001_seg.nii.gz",
        "demo_002_ct.nii.gz", "demo_003_ct.nii.gz"]


def test_nnunet_extras_are_in_imagestr_without_labelstr_and_not_counted_for_training(tmp_path):
    cfg = DemoConfig(cases=4, layout="nnunet", unlabeled=2, **QUICK)
    make_demo(tmp_path, cfg)
    images = sorted(p.name for p in (tmp_path / "imagesTr").iterdir())
    labels = sorted(p.name for p in (tmp_path / "labelsTr").iterdir())
    tests = sorted(p.name for p in (tmp_path / "imagesTs").iterdir())
    assert unlabeled_count(cfg) == 1  # the last of the 4 cases goes to imagesTs, as before
    assert images == ["demo_000_0000.nii.gz", "demo_001_0000.nii.gz", "demo_002_0000.nii.gz",
                      "demo_004_0000.nii.gz", "demo_005_0000.nii.gz"]
    assert labels == ["demo_000.nii.gz", "demo_001.nii.gz", "demo_002.nii.gz"]
    assert tests == ["demo_003_0000.nii.gz"]
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == len(labels)


@pytest.mark.parametrize("difficulty", ["easy", "realistic"])
def test_an_extra_scan_is_the_image_a_labeled_case_of_that_number_would_have(tmp_path, difficulty):
    make_demo(tmp_path / "more", DemoConfig(cases=3, difficulty=difficulty, **QUICK))
    make_demo(tmp_path / "extra", DemoConfig(cases=2, unlabeled=1, difficulty=difficulty, **QUICK))
    name = "demo_002_ct.nii.gz"
    assert (tmp_path / "extra" / name).read_bytes() == (tmp_path / "more" / name).read_bytes()
    assert (tmp_path / "more" / "demo_002_seg.nii.gz").exists()  # the lesions are painted, just not masked


@pytest.mark.parametrize("layout", ["covid19", "nnunet"])
def test_convert_puts_the_extras_in_train_as_unlabeled(tmp_path, layout):
    make_demo(tmp_path / "raw", DemoConfig(cases=4, layout=layout, unlabeled=2, **QUICK))
    convert(tmp_path / "raw", tmp_path / "store.zarr", ConvertConfig(size=16, workers=1))
    cases = read_index(tmp_path / "store.zarr").groupby("case_id")[["labeled", "split"]].first()
    extras = cases.loc[["demo_004", "demo_005"]]
    assert not extras["labeled"].any() and (extras["split"] == "train").all()
    labeled = 4 - unlabeled_count(DemoConfig(cases=4, layout=layout))
    assert int(cases["labeled"].sum()) == labeled


def test_cli_writes_the_extras_and_counts_them_in_the_summary(tmp_path):
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), "--cases", "2", "--unlabeled", "1",
                                           "--size", "32", "--max-slices", "4", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "3 (2 labeled)" in result.output
    raw = tmp_path / "raw"
    assert (raw / "demo_002_ct.nii.gz").exists() and not (raw / "demo_002_seg.nii.gz").exists()


def test_cli_negative_unlabeled_is_one_line_usage_error(tmp_path):
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), "--unlabeled", "-1"])
    assert result.exit_code == 2 and "--unlabeled" in result.output and "Traceback" not in result.output


def test_bad_unlabeled_value_is_a_usage_error():
    from ctprep.errors import UsageError

    with pytest.raises(UsageError, match="unlabeled"):
        DemoConfig(unlabeled=-1)
