"""Store format 2: source_lesion_voxels in the index, lesions lost to resizing reported, older stores refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import phantom, ras_affine, save_nifti
from typer.testing import CliRunner

from cli import prep_app, sample_app
from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreFormatError
from ctprep.index import INDEX_FILE, read_index
from ctprep.store import FORMAT_VERSION, SliceStore

CFG = ConvertConfig(size=16, workers=1)


def write_specks_case(raw: Path) -> np.ndarray:
    """A 48x48x4 case (3x shrink to 16) with one-voxel and two-voxel lesions only; returns its mask (x, y, z)."""
    hu, _ = phantom(shape=(48, 48, 4))
    mask = np.zeros(hu.shape, np.uint8)
    mask[10, 30, 0] = 1
    mask[25:27, 12, 1] = 1
    mask[40, 40, 3] = mask[5, 5, 3] = 1
    save_nifti(raw / "a_ct.nii.gz", hu, ras_affine())
    save_nifti(raw / "a_seg.nii.gz", mask, ras_affine())
    return mask


def test_tiny_lesions_keep_has_lesion_and_source_voxels_are_counted_before_resizing(tmp_path):
    mask = write_specks_case(tmp_path / "raw")
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    index = read_index(tmp_path / "s.zarr")
    per_slice = mask.sum(axis=(0, 1))  # RAS input: z is the slice axis
    assert index["source_lesion_voxels"].tolist() == per_slice.tolist() == [1, 2, 0, 2]
    assert index["has_lesion"].tolist() == (per_slice > 0).tolist()
    assert (report.lost_slices, report.lost_voxels) == (0, 0)
    rows = dict(report.summary_rows())
    assert rows["lesion slices lost to resizing"] == 0 and rows["lesion voxels lost to resizing"] == 0


def downgrade_to_v1(store: Path) -> None:
    """What a format-1 ctstack wrote: format_version 1 and no source_lesion_voxels column."""
    zarr.open_group(str(store), mode="r+").attrs["format_version"] = 1
    index = pd.read_parquet(store / INDEX_FILE).drop(columns="source_lesion_voxels")
    index.to_parquet(store / INDEX_FILE, index=False)


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_v1_store_is_refused_in_one_line_with_the_command_to_reconvert(tmp_path):
    write_specks_case(tmp_path / "raw")
    store = tmp_path / "s.zarr"
    convert(tmp_path / "raw", store, CFG, progress=False)
    downgrade_to_v1(store)
    expected = f"store format version 1, this ctstack needs version {FORMAT_VERSION} (new index column " \
               "source_lesion_voxels, per-rater masks (cases/<id>/raters) and index columns n_raters, " \
               "raters_with_lesion, agreement, pseudo-labels (cases/<id>/pseudo) and index columns pseudo_has_lesion, " \
               "pseudo_lesion_pixels, pseudo_confidence); re-convert into a new store with " \
               "`ctprep convert RAW NEW_STORE`"
    for open_it in (SliceStore.open, read_index):
        with pytest.raises(StoreFormatError, match="store format version 1") as caught:
            open_it(store)
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    stats = CliRunner().invoke(sample_app, ["stats", str(store)])
    assert stats.exit_code == 1 and expected in one_line_error(stats)


def test_convert_into_a_v1_store_refuses_and_leaves_it_untouched(tmp_path):
    write_specks_case(tmp_path / "raw")
    store = tmp_path / "s.zarr"
    convert(tmp_path / "raw", store, CFG, progress=False)
    downgrade_to_v1(store)
    before = (store / INDEX_FILE).read_bytes()
    result = CliRunner().invoke(prep_app, ["convert", str(tmp_path / "raw"), str(store), "--size", "16",
                                           "--workers", "1"])
    assert result.exit_code == 1 and "ctprep convert RAW NEW_STORE" in one_line_error(result)
    assert (store / INDEX_FILE).read_bytes() == before
    convert(tmp_path / "raw", tmp_path / "new.zarr", CFG, progress=False)  # the advice works
    assert "source_lesion_voxels" in read_index(tmp_path / "new.zarr").columns
