"""A damaged store is an error, never zeros: every command exits 1 with one line; verify names the case; verify
--repair and a convert re-run fix it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import phantom, ras_affine, save_nifti, save_random_run
from typer.testing import CliRunner

from cli import model_app, prep_app, sample_app
from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreFormatError
from ctprep.store import SliceStore, StoreLayout
from ctprep.verify import verify

runner = CliRunner()
DAMAGED = "case1"


def _raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    for i in range(4):
        hu, lesion = phantom(seed=i)
        save_nifti(raw / f"case{i}_ct.nii.gz", hu, ras_affine())
        save_nifti(raw / f"case{i}_seg.nii.gz", lesion.astype(np.uint8) * 255, ras_affine())
    return raw


@pytest.fixture
def converted(tmp_path) -> tuple[Path, Path]:
    """(raw, store): four labeled phantom cases at 16x16, all in train (val/test empty, so evaluate uses 'all')."""
    raw = _raw(tmp_path)
    store = tmp_path / "store.zarr"
    convert(raw, store, ConvertConfig(size=16, workers=1), progress=False)
    runner.invoke(sample_app, ["split", str(store), "--test", "0", "--val", "0"])
    return raw, store


def delete_image_shard(store: Path) -> None:
    (store / "cases" / DAMAGED / "image" / "c" / "0" / "0" / "0").unlink()


def delete_mask_shard(store: Path) -> None:
    (store / "cases" / DAMAGED / "mask" / "c" / "0" / "0" / "0").unlink()


def truncate_shard(store: Path) -> None:
    shard = store / "cases" / DAMAGED / "image" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def delete_array_metadata(store: Path) -> None:
    (store / "cases" / DAMAGED / "mask" / "zarr.json").unlink()


def edit_n_slices(store: Path) -> None:
    index = pd.read_parquet(store / "index.parquet")
    index.loc[index["case_id"] == DAMAGED, "n_slices"] += 1
    index.to_parquet(store / "index.parquet", index=False)


DAMAGE = [delete_image_shard, delete_mask_shard, truncate_shard, delete_array_metadata, edit_n_slices]


def one_line_error(result) -> str:
    """The single error line of a failed command (no traceback)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _commands(store: Path, tmp_path: Path) -> dict:
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    return {
        "info": (prep_app, ["info", str(store)]),
        "plan": (sample_app, ["plan", str(store), "--out", str(tmp_path / "plan.parquet")]),
        "train": (model_app, ["train", str(store), "--epochs", "1", "--width", "4", "--depth", "2", "--device",
                              "cpu", "--batch-size", "4", "--out", str(tmp_path / "trained")]),
        "evaluate": (model_app, ["evaluate", str(run), str(store), "--split", "all", "--device", "cpu",
                                 "--grid", "store"]),
    }


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_command_refuses_a_damaged_store_with_one_line_naming_the_case(damage, converted, tmp_path):
    raw, store = converted
    damage(store)
    for name, (app, args) in _commands(store, tmp_path).items():
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (name, result.output)
        line = one_line_error(result)
        assert DAMAGED in line, (name, line)


@pytest.mark.parametrize("damage", DAMAGE)
def test_verify_names_the_damaged_case_and_repair_fixes_it(damage, converted):
    raw, store = converted
    healthy = {c: SliceStore.open(store).read_image_raw(c) for c in ("case0", DAMAGED)}
    damage(store)
    found = runner.invoke(prep_app, ["verify", str(store)])
    assert found.exit_code == 1 and "1 damaged" in found.output and DAMAGED in found.output
    assert verify(store, progress=False).damaged_cases == [DAMAGED]
    fixed = runner.invoke(prep_app, ["verify", str(store), "--repair", str(raw), "--workers", "1"])
    assert fixed.exit_code == 0, fixed.output
    assert "4 cases checked, 0 damaged" in fixed.output
    store_now = SliceStore.open(store)
    for case_id, image in healthy.items():
        np.testing.assert_array_equal(store_now.read_image_raw(case_id), image)


@pytest.mark.parametrize("damage", [delete_image_shard, delete_mask_shard, truncate_shard, delete_array_metadata])
def test_convert_rerun_reconverts_a_case_whose_arrays_fail_the_cheap_check(damage, converted):
    raw, store = converted
    damage(store)
    report = convert(raw, store, ConvertConfig(size=16, workers=1), progress=False)
    assert report.converted == [DAMAGED] and len(report.skipped) == 3
    assert verify(store, progress=False).damaged == []


def test_convert_rerun_rebuilds_an_edited_index(converted):
    raw, store = converted
    edit_n_slices(store)
    report = convert(raw, store, ConvertConfig(size=16, workers=1), progress=False)
    assert report.converted == [] and verify(store, progress=False).damaged == []


def test_a_flipped_byte_of_the_same_size_is_found_by_the_checksum(converted):
    raw, store = converted
    shard = store / "cases" / DAMAGED / "image" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF  # inside the compressed chunks: same size, so only the checksum can tell
    shard.write_bytes(bytes(data))
    report = verify(store, progress=False)
    assert report.damaged_cases == [DAMAGED]
    assert any("checksum" in d.reason for d in report.damaged)


def test_reading_a_missing_shard_raises_instead_of_returning_zeros(converted):
    raw, store = converted
    delete_mask_shard(store)
    with pytest.raises(StoreFormatError, match=r"case1/mask/c/0/0/0: mask shard missing .*ctprep verify"):
        SliceStore.open(store).read_mask(DAMAGED)


def test_an_index_row_without_arrays_is_called_missing_not_unlabeled(converted, tmp_path):
    raw, store = converted
    import shutil

    shutil.rmtree(store / "cases" / DAMAGED)
    result = runner.invoke(prep_app, ["info", str(store)])
    line = one_line_error(result)
    assert "missing from the store" in line and "unlabeled" not in line
    with pytest.raises(StoreFormatError, match="missing from the store"):
        SliceStore.open(store).has_mask(DAMAGED)


def test_a_deleted_root_zarr_json_is_restored_by_verify_repair(converted):
    raw, store = converted
    before = (store / "zarr.json").read_bytes()
    (store / "zarr.json").unlink()
    for app, args in ((prep_app, ["info", str(store)]), (prep_app, ["convert", str(raw), str(store)])):
        line = one_line_error(runner.invoke(app, args))
        assert "root metadata missing" in line and "ctprep verify" in line and "--repair RAW" in line
    fixed = runner.invoke(prep_app, ["verify", str(store), "--repair", str(raw), "--workers", "1"])
    assert fixed.exit_code == 0 and "restored root zarr.json" in fixed.output, fixed.output
    attrs = json.loads((store / "zarr.json").read_bytes())["attributes"]
    assert {k: v for k, v in attrs.items() if k != "split_config"} == \
        {k: v for k, v in json.loads(before)["attributes"].items() if k != "split_config"}
    assert runner.invoke(prep_app, ["info", str(store)]).exit_code == 0


def test_every_shard_is_recorded_with_its_size_and_checksum(converted):
    import hashlib

    raw, store = converted
    attrs = SliceStore.open(store).case_attrs("case0")
    for name in ("image", "mask"):
        shard = store / "cases" / "case0" / name / "c" / "0" / "0" / "0"
        assert attrs["shards"][name] == {"c/0/0/0": {"bytes": shard.stat().st_size,
                                                     "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}}


def test_an_all_empty_mask_still_has_its_shard(tmp_path):
    raw = tmp_path / "raw"
    hu, _ = phantom()
    save_nifti(raw / "clean_ct.nii.gz", hu, ras_affine())
    save_nifti(raw / "clean_seg.nii.gz", np.zeros(hu.shape, np.uint8), ras_affine())
    convert(raw, tmp_path / "s.zarr", ConvertConfig(size=16, workers=1), progress=False)
    assert (tmp_path / "s.zarr" / "cases" / "clean" / "mask" / "c" / "0" / "0" / "0").exists()
    assert verify(tmp_path / "s.zarr", progress=False).damaged == []


def test_verify_of_a_missing_path_is_a_usage_error(tmp_path):
    result = runner.invoke(prep_app, ["verify", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 2 and "nothing.zarr" in one_line_error(result)
