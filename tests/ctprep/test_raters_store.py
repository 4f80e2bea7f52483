"""Rater masks in the store (format 3): cases/<id>/raters, the consensus mask, the index's rater columns, info."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import build_store, phantom, ras_affine, save_nifti, to_lps, to_permuted
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StoreFormatError, UsageError
from ctprep.index import read_index
from ctprep.info import store_info
from ctprep.preprocess import preprocess_mask
from ctprep.raters import consensus, slice_stats
from ctprep.store import FORMAT_VERSION, SliceStore
from ctprep.verify import verify

CFG = ConvertConfig(size=16, workers=1)


def three_raters(lesion: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-made annotators of one lesion: r1 the truth, r2 one voxel wider in x, r3 only its upper half."""
    wide = lesion | np.roll(lesion, 1, axis=0) | np.roll(lesion, -1, axis=0)
    upper = lesion.copy()
    upper[:, :, : int(np.flatnonzero(lesion.any(axis=(0, 1))).mean())] = False
    return {"r1": lesion, "r2": wide, "r3": upper}


def write_rater_case(raw: Path, name: str, hu: np.ndarray, raters: dict[str, np.ndarray], affine: np.ndarray,
                     encode=lambda m: m.astype(np.uint8)) -> None:
    save_nifti(raw / f"{name}_ct.nii.gz", hu, affine)
    for rater, mask in raters.items():
        save_nifti(raw / f"{name}_seg_{rater}.nii.gz", encode(mask), affine)


def test_consensus_rules_on_a_hand_example():
    votes = [np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])]  # 0, 1, 2, 3 raters
    assert consensus(votes, "majority").tolist() == [False, False, True, True]  # ceil(3/2) = 2 raters
    assert consensus(votes, "union").tolist() == [False, True, True, True]
    assert consensus(votes, "intersection").tolist() == [False, False, False, True]
    four = [*votes, np.array([0, 0, 0, 0])]  # 4 raters: 0, 1, 2, 3 votes; at least half = 2
    assert consensus(four, "majority").tolist() == [False, False, True, True]
    two = votes[:2]  # 2 raters: half is one rater, so majority is the union
    assert consensus(two, "majority").tolist() == consensus(two, "union").tolist() == [False, True, True, True]
    with pytest.raises(UsageError, match="expected one of majority, union, intersection"):
        consensus(votes, "mean")


def test_slice_stats_count_raters_and_average_pairwise_dice_on_a_hand_example():
    a, b, c = (np.zeros((3, 1, 3), np.uint8) for _ in range(3))  # 3 slices of 1x3 pixels
    a[1, 0, :2] = b[1, 0, :2] = 1  # slice 1: a and b agree, c saw nothing
    a[2, 0, [0, 1]] = 1
    b[2, 0, [1, 2]] = 1
    c[2, 0, 1] = 1
    with_lesion, agreement = slice_stats(np.stack([a, b, c]))
    assert with_lesion == [0, 2, 3]
    assert np.isnan(agreement[0])  # every rater empty
    assert agreement[1] == pytest.approx((1 + 0 + 0) / 3)  # a-b 1, a-c and b-c 0
    assert agreement[2] == pytest.approx((2 * 1 / 4 + 2 * 1 / 3 + 2 * 1 / 3) / 3)
    b[0, 0, 0] = 1  # slice 0 now: b marks, a and c both empty: their pair agrees (Dice 1)
    assert slice_stats(np.stack([a, b, c]))[1][0] == pytest.approx((0 + 1 + 0) / 3)
    one_with_lesion, one_agreement = slice_stats(a[None])
    assert one_with_lesion == [0, 1, 1] and np.isnan(one_agreement[0]) and one_agreement[1:] == [1.0, 1.0]


ORIENTATIONS = {"ras": lambda d, a: (d, a), "lps": to_lps, "permuted": to_permuted}
ENCODINGS = {"0/1 uint8": lambda m: m.astype(np.uint8), "0/255 uint8": lambda m: m.astype(np.uint8) * 255,
             "float32": lambda m: m.astype(np.float32)}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_rater_and_the_consensus_are_stored_whatever_the_orientation_and_encoding(tmp_path, orientation,
                                                                                        encoding):
    hu, lesion = phantom()
    raters = three_raters(lesion)
    write_rater_case(tmp_path / "ras", "a", hu, raters, ras_affine())  # the reference: RAS, 0/1
    convert(tmp_path / "ras", tmp_path / "ras.zarr", CFG, progress=False)
    turn = ORIENTATIONS[orientation]
    turned_hu, affine = turn(hu, ras_affine())
    write_rater_case(tmp_path / "raw", "a", turned_hu, {r: turn(m, ras_affine())[0] for r, m in raters.items()},
                     affine, ENCODINGS[encoding])
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)

    store, reference = SliceStore.open(tmp_path / "s.zarr"), SliceStore.open(tmp_path / "ras.zarr")
    assert store.rater_ids("a") == ["r1", "r2", "r3"] and store.consensus == "majority"
    np.testing.assert_array_equal(store.read_raters("a"), reference.read_raters("a"))  # same anatomy, same arrays
    np.testing.assert_array_equal(store.read_mask("a"), reference.read_mask("a"))
    geom = reference.geometry("a")  # expected values from the RAS sources, resized as masks are
    expected = np.stack([preprocess_mask(raters[r], geom) for r in ("r1", "r2", "r3")])
    np.testing.assert_array_equal(store.read_raters("a"), expected)
    votes = sum(m.astype(int) for m in raters.values())
    np.testing.assert_array_equal(store.read_mask("a"), preprocess_mask(votes >= 2, geom))  # on the source grid
    assert store.read_raters("a", np.array([1, 3])).shape == (3, 2, 16, 16)
    assert store.source_rater_paths("a") == {r: (tmp_path / "raw" / f"a_seg_{r}.nii.gz").absolute()
                                             for r in ("r1", "r2", "r3")}


def test_index_rater_columns_match_the_stored_raters(tmp_path):
    hu, lesion = phantom()
    write_rater_case(tmp_path / "raw", "a", hu, three_raters(lesion), ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    index, raters = read_index(store.path), store.read_raters("a").astype(bool)
    marked = raters.any(axis=(2, 3))  # (R, Z)
    assert index["n_raters"].tolist() == [3] * raters.shape[1]
    assert index["raters_with_lesion"].tolist() == marked.sum(axis=0).tolist()
    for z, found in enumerate(index["agreement"]):
        if not marked[:, z].any():
            assert np.isnan(found)
            continue
        pairs = []
        for i, j in combinations(range(3), 2):
            total = raters[i, z].sum() + raters[j, z].sum()
            pairs.append(2 * (raters[i, z] & raters[j, z]).sum() / total if total else 1.0)
        assert found == pytest.approx(np.mean(pairs), rel=1e-6)
    assert index["has_lesion"].tolist() == store.read_mask("a").any(axis=(1, 2)).tolist()  # on the consensus
    assert str(index["agreement"].dtype) == "float32" and str(index["n_raters"].dtype) == "int16"


def test_a_rater_mask_of_another_shape_fails_its_case_alone(tmp_path):
    hu, lesion = phantom()
    raters = three_raters(lesion)
    write_rater_case(tmp_path / "raw", "good", hu, raters, ras_affine())
    write_rater_case(tmp_path / "raw", "bad", hu, raters, ras_affine())
    save_nifti(tmp_path / "raw" / "bad_seg_r2.nii.gz", raters["r2"][:, :, :-1].astype(np.uint8), ras_affine())
    report = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    assert report.converted == ["good"]
    (line,) = report.failed
    assert line.startswith(str(tmp_path / "raw" / "bad_seg_r2.nii.gz")) and "mask shape" in line


def test_an_empty_rater_is_kept_and_a_one_mask_case_has_rater_1(tmp_path):
    hu, lesion = phantom()
    write_rater_case(tmp_path / "raw", "a", hu, {"A": lesion, "B": np.zeros_like(lesion)}, ras_affine())
    save_nifti(tmp_path / "raw" / "b_ct.nii.gz", hu, ras_affine())
    save_nifti(tmp_path / "raw" / "b_seg.nii.gz", lesion.astype(np.uint8), ras_affine())
    save_nifti(tmp_path / "raw" / "c_ct.nii.gz", hu, ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    raters = store.read_raters("a")
    assert store.rater_ids("a") == ["A", "B"] and raters[1].sum() == 0 and raters[0].sum() > 0
    np.testing.assert_array_equal(store.read_mask("a"), raters[0])  # 2 raters: at least one of them = union
    assert store.rater_ids("b") == ["1"]
    np.testing.assert_array_equal(store.read_raters("b")[0], store.read_mask("b"))
    assert store.read_raters("c") is None and store.rater_ids("c") == [] and store.source_rater_paths("c") == {}
    index = read_index(store.path).set_index(["case_id", "slice"])
    assert set(index.loc["b", "n_raters"]) == {1} and set(index.loc["c", "n_raters"]) == {0}
    lesion_b = index.loc["b", "has_lesion"]
    assert (index.loc["b", "agreement"][lesion_b] == 1.0).all() and index.loc["b", "agreement"][~lesion_b].isna().all()
    assert verify(store.path, progress=False).damaged == []


@pytest.mark.parametrize("rule, needed", [("union", 1), ("intersection", 3), ("majority", 2)])
def test_convert_consensus_option_picks_the_stored_mask_and_is_recorded(tmp_path, rule, needed):
    hu, lesion = phantom()
    raters = three_raters(lesion)
    write_rater_case(tmp_path / "raw", "a", hu, raters, ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, consensus=rule), progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    votes = sum(m.astype(int) for m in raters.values())
    assert store.consensus == rule
    np.testing.assert_array_equal(store.read_mask("a"), preprocess_mask(votes >= needed, store.geometry("a")))


def test_another_consensus_on_an_existing_store_is_refused_and_none_keeps_its_own(tmp_path):
    hu, lesion = phantom()
    write_rater_case(tmp_path / "raw", "a", hu, three_raters(lesion), ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, consensus="union"),
            progress=False)
    again = convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)  # no --consensus: the store's
    assert again.skipped == ["a"]
    result = CliRunner().invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "s.zarr"), "--size",
                                           "16", "--consensus", "intersection"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "store masks are the union consensus of the raters, not the intersection" in result.output
    assert "pass --consensus union" in result.output
    bad = CliRunner().invoke(prep_app, ["convert", str(tmp_path / "raw"), str(tmp_path / "t.zarr"),
                                        "--consensus", "mean"])
    assert bad.exit_code == 2 and "--consensus mean: expected one of majority, union, intersection" in bad.output


def test_a_v2_store_is_refused_with_the_command_to_reconvert(tmp_path):
    hu, lesion = phantom()
    write_rater_case(tmp_path / "raw", "a", hu, three_raters(lesion), ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", CFG, progress=False)
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs["format_version"] = 2
    with pytest.raises(StoreFormatError) as caught:
        SliceStore.open(tmp_path / "s.zarr")
    assert FORMAT_VERSION == 4
    assert str(caught.value) == (
        f"{tmp_path / 's.zarr'}: store format version 2, this ctstack needs version 4 (per-rater masks "
        "(cases/<id>/raters) and index columns n_raters, raters_with_lesion, agreement, pseudo-labels "
        "(cases/<id>/pseudo) and index columns pseudo_has_lesion, pseudo_lesion_pixels, pseudo_confidence); "
        f"re-convert into a new store with `ctprep convert RAW NEW_STORE` (or delete {tmp_path / 's.zarr'} first)")


def test_info_reports_raters_consensus_and_disagreement(tmp_path):
    cases = {f"p{i}": (*phantom(seed=i), ras_affine()) for i in range(3)}
    _, lesion, _ = cases["p0"]
    store = build_store(tmp_path / "s.zarr", cases, {"p0": "train", "p1": "train", "p2": "val"},
                        raters={"p0": three_raters(lesion), "p1": {"a": lesion, "b": lesion}})
    index = read_index(store)
    disagree = int(((index["raters_with_lesion"] > 0) & (index["raters_with_lesion"] < index["n_raters"])).sum())
    assert disagree > 0  # r3 marks only the upper half of p0's lesion slices
    info = store_info(store)
    rows = dict(info.rows())
    assert rows["raters per case"] == "1-3" and rows["multi-rater cases"] == 2 and rows["consensus"] == "majority"
    share = 100 * disagree / int(index["labeled"].sum())
    assert rows["rater disagreement slices"] == f"{disagree} ({share:.1f} % of labeled)"
    result = CliRunner().invoke(prep_app, ["info", str(store)])
    assert result.exit_code == 0 and "rater disagreement slices" in result.output and "1-3" in result.output


def test_a_restored_root_keeps_the_consensus_the_cases_record(tmp_path):
    hu, lesion = phantom()
    write_rater_case(tmp_path / "raw", "a", hu, three_raters(lesion), ras_affine())
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=16, workers=1, consensus="union"),
            progress=False)
    (tmp_path / "s.zarr" / "zarr.json").unlink()
    from ctprep.verify import restore_root

    assert restore_root(tmp_path / "s.zarr")
    assert SliceStore.open(tmp_path / "s.zarr").consensus == "union"
