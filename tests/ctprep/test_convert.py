"""The convert pipeline: source encodings, per-case attributes, index agreement, splits, parallel equivalence."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import phantom, ras_affine, save_nifti

from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreFormatError, UsageError
from ctprep.index import read_index
from ctprep.store import SliceStore
from ctprep.splits import SplitConfig, assign_splits

CFG = ConvertConfig(size=16, workers=1)


def write_case(raw: Path, name: str, hu: np.ndarray, mask: np.ndarray | None, affine=None, mask_dtype=np.uint8,
               **kw) -> None:
    affine = ras_affine() if affine is None else affine
    save_nifti(raw / f"{name}_ct.nii.gz", hu, affine, **kw)
    if mask is not None:
        save_nifti(raw / f"{name}_seg.nii.gz", np.asarray(mask).astype(mask_dtype), affine)


def write_phantoms(raw: Path, seeds) -> None:
    for seed in seeds:
        hu, lesion = phantom(seed=seed)
        write_case(raw, f"p{seed:02d}", hu, lesion)


def store_arrays(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    store = SliceStore.open(path)
    return {c: (store.read_image_raw(c), store.read_mask(c)) for c in store.case_ids()}


def test_int16_scaled_float32_and_uint16_offset_sources_give_the_same_store(tmp_path):
    hu, lesion = phantom()
    hu = np.clip(np.rint(hu), -1024, None)  # integral HU: exact in every encoding
    write_case(tmp_path / "raw", "int16", hu, lesion, dtype=np.int16, slope=1.0, inter=-1024.0)
    write_case(tmp_path / "raw", "float32", hu, lesion, dtype=np.float32)
    write_case(tmp_path / "raw", "uint16", hu, lesion, dtype=np.uint16, slope=1.0, inter=-1024.0)
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    arrays = store_arrays(tmp_path / "s.zarr")
    for name in ("int16", "uint16"):
        np.testing.assert_array_equal(arrays[name][0], arrays["float32"][0])


@pytest.mark.parametrize("scale, dtype", [(1, np.uint8), (255, np.uint8), (1, np.float32), (2, np.int16)],
                         ids=["0/1", "0/255", "float", "labels {0,2}"])
def test_mask_encodings_give_the_same_stored_mask(tmp_path, scale, dtype):
    hu, lesion = phantom()
    labels = lesion * scale
    labels[0, 0, 0] = 1 if scale == 2 else labels[0, 0, 0]  # labels {0, 1, 2}
    reference = lesion.copy()
    reference[0, 0, 0] |= scale == 2
    write_case(tmp_path / "raw", "encoded", hu, labels, mask_dtype=dtype)
    write_case(tmp_path / "raw", "reference", hu, reference)
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    arrays = store_arrays(tmp_path / "s.zarr")
    assert arrays["encoded"][1].max() == 1
    np.testing.assert_array_equal(arrays["encoded"][1], arrays["reference"][1])


def test_index_lesion_pixels_and_has_lesion_agree_with_stored_masks(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    index = store.index()
    for case_id, rows in index.groupby("case_id"):
        per_slice = store.read_mask(case_id).reshape(len(rows), -1).sum(axis=1)
        np.testing.assert_array_equal(rows["lesion_pixels"].to_numpy(), per_slice)
        np.testing.assert_array_equal(rows["has_lesion"].to_numpy(), per_slice > 0)
        assert store.case_attrs(case_id)["lesion_pixels"] == per_slice.tolist()
    assert index["has_lesion"].any() and not index["has_lesion"].all()


def test_case_attributes_record_sources_geometry_and_layout(tmp_path):
    write_phantoms(tmp_path / "raw", [0])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    attrs = SliceStore.open(tmp_path / "s.zarr").case_attrs("p00")
    image_file = tmp_path / "raw" / "p00_ct.nii.gz"
    assert attrs["source"]["image"]["path"] == str(image_file)
    assert attrs["source"]["image"]["size"] == image_file.stat().st_size
    assert attrs["source"]["mask"]["path"] == str(tmp_path / "raw" / "p00_seg.nii.gz")
    assert len(attrs["source_fingerprint"]) == 64
    assert attrs["geometry"]["source_shape"] == [23, 17, 9] and attrs["geometry"]["source_orientation"] == "RAS"
    assert attrs["n_slices"] == 9 and attrs["labeled"] is True
    assert attrs["layout"] == {"window_hu": [-1000.0, 400.0], "size": 16, "dtype": "float16"}


def test_image_without_mask_is_kept_as_unlabeled(tmp_path):
    hu, _ = phantom()
    write_case(tmp_path / "raw", "u", hu, None)
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert store.read_mask("u") is None and store.case_attrs("u")["lesion_pixels"] is None
    index = store.index()
    assert not index["labeled"].any() and not index["has_lesion"].any() and len(index) == 9


def test_bad_case_fails_alone_and_the_others_convert(tmp_path):
    write_phantoms(tmp_path / "raw", range(2))
    bad = tmp_path / "raw" / "p01_seg.nii.gz"
    save_nifti(bad, np.zeros((23, 17, 8), np.uint8), ras_affine())
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert report.converted == ["p00"] and len(report.failed) == 1 and report.failed[0].startswith(str(bad))
    assert SliceStore.open(tmp_path / "s.zarr").case_ids() == ["p00"]


def test_adding_cases_never_moves_existing_splits(tmp_path):
    write_phantoms(tmp_path / "raw", range(4))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    before = read_index(tmp_path / "s.zarr").groupby("case_id")["split"].first()
    write_phantoms(tmp_path / "raw", range(4, 12))
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    after = read_index(tmp_path / "s.zarr").groupby("case_id")["split"].first()
    assert len(after) == 12
    pd.testing.assert_series_equal(after[before.index], before)
    assert after.to_dict() == assign_splits(sorted(after.index), SplitConfig())


def test_rerun_without_split_options_keeps_the_recorded_split_config(tmp_path):
    write_phantoms(tmp_path / "raw", range(8))
    custom = SplitConfig(test=0.5, val=0.5, seed=7)
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, split=custom), progress=False)
    write_phantoms(tmp_path / "raw", [8])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    assert store.attrs["split_config"] == {"test": 0.5, "val": 0.5, "seed": 7, "csv": None}
    splits = store.index().groupby("case_id")["split"].first().to_dict()
    assert splits == assign_splits(sorted(splits), custom)


def test_split_csv_overrides_the_hash(tmp_path):
    write_phantoms(tmp_path / "raw", range(3))
    csv = tmp_path / "splits.csv"
    csv.write_text("case_id,split\np00,test\np01,test\np02,val\n")
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, split=SplitConfig(csv=csv)),
            progress=False)
    splits = read_index(tmp_path / "s.zarr").groupby("case_id")["split"].first().to_dict()
    assert splits == {"p00": "test", "p01": "test", "p02": "val"}


def test_two_workers_give_the_same_store_as_one(tmp_path):
    write_phantoms(tmp_path / "raw", range(4))
    convert(tmp_path / "raw", tmp_path / "one.zarr", CFG, progress=False)
    report = convert(tmp_path / "raw", tmp_path / "two.zarr", ConvertConfig(size=16, workers=2), progress=False)
    assert report.workers == 2
    one, two = store_arrays(tmp_path / "one.zarr"), store_arrays(tmp_path / "two.zarr")
    assert one.keys() == two.keys()
    for case_id in one:
        np.testing.assert_array_equal(one[case_id][0], two[case_id][0])
        np.testing.assert_array_equal(one[case_id][1], two[case_id][1])
    pd.testing.assert_frame_equal(read_index(tmp_path / "one.zarr"), read_index(tmp_path / "two.zarr"))


def test_uint8_store_encodes_the_same_unit_values_as_float16(tmp_path):
    write_phantoms(tmp_path / "raw", [0])
    convert(tmp_path / "raw", tmp_path / "f.zarr", CFG, progress=False)
    convert(tmp_path / "raw", tmp_path / "u.zarr", ConvertConfig(size=16, dtype="uint8", workers=1), progress=False)
    unit = SliceStore.open(tmp_path / "f.zarr").read_image("p00")
    raw = SliceStore.open(tmp_path / "u.zarr").read_image_raw("p00")
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(raw / 255.0, unit, atol=0.5 / 255 + 1e-3)  # rounding + float16 resolution


def test_other_layout_on_an_existing_store_is_refused(tmp_path):
    write_phantoms(tmp_path / "raw", [0])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    with pytest.raises(StoreFormatError, match="store was made with"):
        convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=32, workers=1), progress=False)


@pytest.mark.parametrize("kwargs, words", [
    ({"window_hu": (400.0, -1000.0)}, "LO must be below HI"),
    ({"window_hu": "abc"}, "expected 'LO,HI'"),
    ({"dtype": "float64"}, "expected one of"),
    ({"size": 4}, "expected 8..4096"),
    ({"workers": 0}, "expected 1 or more"),
])
def test_bad_options_are_usage_errors(kwargs, words):
    with pytest.raises(UsageError, match=words):
        ConvertConfig(**kwargs)


def test_folder_without_cases_is_a_usage_error(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(UsageError, match="no NIfTI or DICOM cases found"):
        convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert not (tmp_path / "s.zarr").exists()
