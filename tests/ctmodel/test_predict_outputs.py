"""ctmodel predict never destroys a file: outputs are planned and checked as a set before the first is written."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import model_app
from ctmodel.predict import predict_paths
from ctprep.errors import OutputError, UsageError
from ctprep.store import StoreLayout
from conftest import phantom, ras_affine, save_nifti, save_random_run

LAYOUT = StoreLayout(size=16)


def _scans(folder: Path, *names: str) -> dict[Path, bytes]:
    """Write tiny phantom scans named ``names`` into ``folder``; return every file's bytes, for later comparison."""
    hu, _ = phantom()
    for name in names:
        save_nifti(folder / name, hu, ras_affine(), dtype=np.int16)
    return _snapshot(folder)


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders if folder.exists() for p in sorted(folder.iterdir())}


def _predict(tmp_path: Path, source: Path, output: Path, *options: str):
    run = tmp_path / "run" if (tmp_path / "run").exists() else save_random_run(tmp_path / "run", LAYOUT)
    return CliRunner().invoke(model_app, ["predict", str(run), str(source), str(output), "--device", "cpu", *options])


def _one_line(result) -> str:
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_output_folder_equal_to_input_never_writes_a_prediction_over_another_input(tmp_path):
    before = _scans(tmp_path / "in", "scan.nii.gz", "scan_0000.nii.gz")  # scan_0000 -> scan.nii.gz: an input
    result = _predict(tmp_path, tmp_path / "in", tmp_path / "in")
    assert result.exit_code == 2  # the command line is wrong: OUTPUT collides with INPUT
    line = _one_line(result)
    assert "scan.nii.gz" in line and "choose another OUTPUT" in line
    assert _snapshot(tmp_path / "in") == before


def test_an_output_linked_to_an_input_is_refused_even_with_overwrite(tmp_path):
    before = _scans(tmp_path / "in", "a_0000.nii.gz")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "in" / "a_0000.nii.gz", tmp_path / "out" / "a.nii.gz")
    os.link(tmp_path / "in" / "a_0000.nii.gz", tmp_path / "hard.nii.gz")
    for output in (tmp_path / "out", tmp_path / "hard.nii.gz"):
        result = _predict(tmp_path, tmp_path / "in" / "a_0000.nii.gz", output, "--overwrite")
        assert result.exit_code == 2 and "a_0000.nii.gz" in _one_line(result)
    assert _snapshot(tmp_path / "in") == before
    assert os.readlink(tmp_path / "out" / "a.nii.gz") == str(tmp_path / "in" / "a_0000.nii.gz")


def test_two_inputs_with_one_output_name_write_nothing(tmp_path):
    before = _scans(tmp_path / "in", "a.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz")
    result = _predict(tmp_path, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 1  # the input folder's names collide: the data, not the command line
    line = _one_line(result)
    assert "a.nii.gz and a_0000.nii.gz" in line
    assert not (tmp_path / "out").exists()  # not even b.nii.gz: the set is checked before the first write
    assert _snapshot(tmp_path / "in") == before


def test_existing_outputs_are_refused_naming_the_first_few_and_kept(tmp_path):
    _scans(tmp_path / "in", *(f"{name}_0000.nii.gz" for name in "abcde"))
    (tmp_path / "out").mkdir()
    for name in "bcde":
        (tmp_path / "out" / f"{name}.nii.gz").write_bytes(f"earlier result {name}".encode())
    before = _snapshot(tmp_path / "out")
    result = _predict(tmp_path, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 1  # the state of the filesystem, not the command line
    line = _one_line(result)
    assert "b.nii.gz" in line and "3 more" in line and "c.nii.gz, d.nii.gz, ..." in line and "--overwrite" in line
    assert _snapshot(tmp_path / "out") == before  # a.nii.gz, new, was not written either


def test_overwrite_replaces_existing_outputs(tmp_path):
    _scans(tmp_path / "in", "a_0000.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.nii.gz").write_bytes(b"earlier result")
    result = _predict(tmp_path, tmp_path / "in", tmp_path / "out", "--overwrite")
    assert result.exit_code == 0, result.output
    assert nib.load(str(tmp_path / "out" / "a.nii.gz")).shape == phantom()[0].shape


def test_single_file_output_that_exists_is_refused_without_overwrite(tmp_path):
    _scans(tmp_path / "in", "scan.nii.gz")
    (tmp_path / "mask.nii.gz").write_bytes(b"keep me")
    result = _predict(tmp_path, tmp_path / "in" / "scan.nii.gz", tmp_path / "mask.nii.gz")
    assert result.exit_code == 1 and "--overwrite" in _one_line(result)
    assert (tmp_path / "mask.nii.gz").read_bytes() == b"keep me"


def test_a_prediction_into_a_stores_reserved_files_is_refused(tmp_path, tiny_store):
    before = (tiny_store / "index.parquet").read_bytes()
    _scans(tmp_path / "in", "scan.nii.gz")
    result = _predict(tmp_path, tmp_path / "in" / "scan.nii.gz", tiny_store / "cases" / "x.nii.gz")
    assert result.exit_code == 2 and "reserved cases/x.nii.gz" in _one_line(result)
    assert (tiny_store / "index.parquet").read_bytes() == before and not (tiny_store / "cases" / "x.nii.gz").exists()


def test_the_library_raises_the_same_errors_before_calling_the_network(tmp_path):
    _scans(tmp_path / "in", "a.nii.gz", "a_0000.nii.gz")

    def never(volume):
        raise AssertionError("the network ran before the outputs were checked")

    with pytest.raises(UsageError):
        predict_paths(tmp_path / "in", tmp_path / "in", never, LAYOUT, progress=False)
    with pytest.raises(OutputError):
        predict_paths(tmp_path / "in", tmp_path / "out", never, LAYOUT, progress=False)
