"""`ctmodel pseudo-label`: the stored pseudo masks are the run's predictions on the store grid, the index agrees
with them, only unlabeled train cases are touched, re-runs replace or skip, and --min-confidence leaves out."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import model_app
from ctmodel.checkpoint import atomic_save, load_run, read_checkpoint
from ctmodel.inference import predict_volume
from ctmodel.pseudolabel import LUNG_FIELD_HU, PseudoLabelConfig, lung_field, pseudo_label, slice_confidence
from ctprep.errors import RunError, UsageError
from ctprep.index import read_index
from ctprep.store import SliceStore, StoreLayout
from ctprep.verify import verify
from conftest import build_store, one_line_error, phantom, ras_affine, save_nifti, save_random_run

LAYOUT = StoreLayout(size=16)
UNLABELED_TRAIN = ["unl0", "unl1", "unl2"]
CPU = PseudoLabelConfig(device="cpu", precision="fp32")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Labeled train/val/test cases, three unlabeled train cases and one unlabeled case put in val."""
    splits = {"lab0": "train", "lab1": "train", "val0": "val", "test0": "test", "unlval": "val",
              **{case: "train" for case in UNLABELED_TRAIN}}
    cases = {}
    for seed, case in enumerate(sorted(splits)):
        hu, mask = phantom(seed=seed)
        cases[case] = (hu, None if case.startswith("unl") else mask, ras_affine())
    return build_store(tmp_path / "store.zarr", cases, splits, LAYOUT)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return save_random_run(tmp_path / "run", LAYOUT)


def other_run(run_dir: Path, source: Path) -> Path:
    """A copy of run ``source`` whose weights are perturbed (another checkpoint, other predictions)."""
    payload = read_checkpoint(source / "best.pt")
    generator = torch.Generator().manual_seed(1)
    payload["model"] = {k: v + 0.3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                        for k, v in payload["model"].items()}
    run_dir.mkdir()
    (run_dir / "config.json").write_text((source / "config.json").read_text())
    atomic_save(payload, run_dir / "best.pt")
    return run_dir


def predicted_masks(run_dir: Path, store_path: Path, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """What the run predicts for each unlabeled train case, computed here from the run and the stored images."""
    model, store = load_run(run_dir).model, SliceStore.open(store_path)
    return {case: (predict_volume(model, torch.from_numpy(store.read_image(case)), 4, "fp32") >= threshold)
            .numpy().astype(np.uint8) for case in UNLABELED_TRAIN}


def case_digests(store_path: Path, case_id: str) -> dict[str, str]:
    """SHA-256 of every file of a case folder."""
    folder = store_path / "cases" / case_id
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pseudo_masks_equal_the_runs_predictions_on_every_unlabeled_train_case(store, run):
    report = pseudo_label(run, store, CPU, progress=False)
    expected = predicted_masks(run, store)
    opened = SliceStore.open(store)
    assert sorted(report.labelled) == UNLABELED_TRAIN
    assert any(mask.any() for mask in expected.values()) and not all(mask.all() for mask in expected.values())
    for case, mask in expected.items():
        np.testing.assert_array_equal(opened.read_pseudo(case), mask)
    record = opened.pseudo_record("unl0")
    assert record["checkpoint_sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert (record["run"], record["checkpoint"], record["threshold"]) == (str(run.resolve()), "best", 0.5)
    assert {"confidence_measure", "ctstack_version"} <= set(record) and "created" not in set(record)
    assert report.lesion_slices == sum(int(m.any(axis=(1, 2)).sum()) for m in expected.values())


def test_index_columns_agree_with_the_stored_arrays_and_verify_passes(store, run):
    pseudo_label(run, store, CPU, progress=False)
    opened, index = SliceStore.open(store), read_index(store)
    for case, rows in index.groupby("case_id"):
        rows = rows.sort_values("slice")
        mask = opened.read_pseudo(case)
        if mask is None:
            assert not rows["pseudo_has_lesion"].any() and rows["pseudo_confidence"].isna().all()
            continue
        pixels = mask.reshape(len(mask), -1).sum(axis=1)
        assert list(rows["pseudo_lesion_pixels"]) == list(pixels)
        assert list(rows["pseudo_has_lesion"]) == list(pixels > 0)
        np.testing.assert_allclose(rows["pseudo_confidence"], opened.pseudo_record(case)["confidence"], rtol=1e-6)
    assert not verify(store).damaged


def test_lung_field_keeps_lung_and_ground_glass_and_drops_air_padding_and_fat():
    window = (-1000.0, 400.0)
    hu = np.array([-3024.0, -1000.0, -850.0, -600.0, -100.0, 40.0])  # padding, air, lung, GGO, fat, soft tissue
    stored = np.clip((hu - window[0]) / (window[1] - window[0]), 0, 1).reshape(1, 1, -1)
    field = lung_field(stored, np.zeros_like(stored), 0.5, window)
    assert field.ravel().tolist() == [False, False, True, True, False, False]
    marked = lung_field(stored, np.full_like(stored, 0.7), 0.5, window)  # what the model marks joins the field
    assert marked.all()
    assert LUNG_FIELD_HU[0] > -1000 and LUNG_FIELD_HU[1] < -100


def test_confidence_is_the_mean_of_max_p_one_minus_p_over_the_field_or_the_whole_empty_field_slice():
    probs = np.array([[[0.2, 0.5], [0.4, 0.9]],
                      [[0.3, 0.1], [0.6, 0.5]]])
    field = np.array([[[True, False], [False, True]],
                      [[False, False], [False, False]]])
    expected = [(0.8 + 0.9) / 2, (0.7 + 0.9 + 0.6 + 0.5) / 4]
    np.testing.assert_allclose(slice_confidence(probs, field), expected)


def test_a_rerun_skips_what_this_checkpoint_did_and_another_run_replaces_it(store, run, tmp_path):
    pseudo_label(run, store, CPU, progress=False)
    before = {case: case_digests(store, case) for case in UNLABELED_TRAIN}
    index_before = (store / "index.parquet").stat()
    again = pseudo_label(run, store, CPU, progress=False)
    assert again.skipped == UNLABELED_TRAIN and not again.labelled
    assert {case: case_digests(store, case) for case in UNLABELED_TRAIN} == before
    index_after = (store / "index.parquet").stat()
    assert (index_after.st_ino, index_after.st_mtime_ns) == (index_before.st_ino, index_before.st_mtime_ns)
    forced = pseudo_label(run, store, PseudoLabelConfig(device="cpu", cases="all-unlabeled-in-split"),
                          progress=False)
    assert sorted(forced.labelled) == UNLABELED_TRAIN and not forced.skipped

    second = other_run(tmp_path / "run2", run)
    replaced = pseudo_label(second, store, CPU, progress=False)
    assert sorted(replaced.labelled) == UNLABELED_TRAIN
    expected, opened = predicted_masks(second, store), SliceStore.open(store)
    assert any(not np.array_equal(m, first) for m, first in zip(expected.values(),
                                                                  predicted_masks(run, store).values()))
    for case, mask in expected.items():
        np.testing.assert_array_equal(opened.read_pseudo(case), mask)
        assert opened.pseudo_record(case)["run"] == str(second.resolve())
    assert not verify(store).damaged


def test_val_test_and_labeled_cases_stay_byte_identical(store, run):
    others = ["lab0", "lab1", "val0", "test0", "unlval"]
    before = {case: case_digests(store, case) for case in others}
    pseudo_label(run, store, CPU, progress=False)
    assert {case: case_digests(store, case) for case in others} == before
    assert SliceStore.open(store).pseudo_record("unlval") is None


def test_min_confidence_leaves_low_cases_out_and_removes_their_older_labels(store, run):
    first = pseudo_label(run, store, CPU, progress=False)
    ordered = sorted(first.labelled.values())
    assert ordered[0] < ordered[-1]
    cut = (ordered[0] + ordered[1]) / 2  # the least confident case falls below it
    low = min(first.labelled, key=first.labelled.get)
    cfg = PseudoLabelConfig(device="cpu", min_confidence=cut)
    report = pseudo_label(run, store, cfg, progress=False)  # incremental: judged on the stored records
    assert list(report.left_out) == [low] and sorted(report.skipped) == sorted(set(UNLABELED_TRAIN) - {low})
    assert report.left_out[low] == pytest.approx(first.labelled[low])
    opened, index = SliceStore.open(store), read_index(store)
    assert opened.read_pseudo(low) is None and opened.pseudo_record(low) is None
    assert index.loc[index["case_id"] == low, "pseudo_confidence"].isna().all()
    fresh = pseudo_label(run, store, PseudoLabelConfig(device="cpu", min_confidence=cut,
                                                       cases="all-unlabeled-in-split"), progress=False)
    assert list(fresh.left_out) == [low] and len(fresh.labelled) == len(UNLABELED_TRAIN) - 1


def test_convert_rerun_on_the_raw_folder_keeps_the_pseudo_labels(tmp_path):
    from ctprep.convert import ConvertConfig, convert

    raw = tmp_path / "raw"
    for seed, name in enumerate(["a", "b", "c", "d", "e"]):
        hu, mask = phantom(seed=seed)
        save_nifti(raw / f"{name}_ct.nii.gz", hu, ras_affine())
        if name not in ("d", "e"):  # d and e ship without masks: unlabeled, always train
            save_nifti(raw / f"{name}_seg.nii.gz", mask.astype(np.uint8), ras_affine())
    store, cfg = tmp_path / "store.zarr", ConvertConfig(size=16, workers=1)
    convert(raw, store, cfg)
    run = save_random_run(tmp_path / "run", SliceStore.open(store).layout)
    pseudo_label(run, store, CPU, progress=False)
    opened = SliceStore.open(store)
    kept = {case: (opened.read_pseudo(case), opened.pseudo_record(case)) for case in ("d", "e")}
    columns = read_index(store).filter(like="pseudo")
    convert(raw, store, cfg)
    opened = SliceStore.open(store)
    for case, (mask, record) in kept.items():
        np.testing.assert_array_equal(opened.read_pseudo(case), mask)
        assert opened.pseudo_record(case) == record
    assert read_index(store).filter(like="pseudo").equals(columns)


def test_a_store_without_unlabeled_train_cases_is_one_error_naming_the_fix(tiny_store, run):
    with pytest.raises(RunError, match=r"store\.zarr: expected unlabeled cases .*ctprep demo RAW --unlabeled"):
        pseudo_label(run, tiny_store, CPU, progress=False)


@pytest.mark.parametrize("options", [dict(cases="some"), dict(threshold=1.0), dict(min_confidence=1.5),
                                     dict(checkpoint="middle")])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        PseudoLabelConfig(**options)


def test_cli_pseudo_labels_and_prints_the_summary(store, run):
    result = CliRunner().invoke(model_app, ["pseudo-label", str(run), str(store), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "cases pseudo-labelled" in result.output and "skipped as already done" in result.output
    assert SliceStore.open(store).pseudo_record("unl1") is not None


def test_cli_store_without_unlabeled_cases_is_one_line(tiny_store, run):
    result = CliRunner().invoke(model_app, ["pseudo-label", str(run), str(tiny_store), "--device", "cpu"])
    assert result.exit_code == 1 and "--unlabeled" in one_line_error(result)


def test_cli_errors_are_one_line(store, run, tmp_path):
    runner = CliRunner()
    wide = save_random_run(tmp_path / "wide", StoreLayout(size=32))
    layout = runner.invoke(model_app, ["pseudo-label", str(wide), str(store), "--device", "cpu"])
    assert layout.exit_code == 1 and "differs from run" in one_line_error(layout)
    bad = runner.invoke(model_app, ["pseudo-label", str(run), str(store), "--cases", "all"])
    assert bad.exit_code == 2 and "--cases all" in one_line_error(bad)
    missing = runner.invoke(model_app, ["pseudo-label", str(tmp_path / "nope"), str(store)])
    assert missing.exit_code == 2 and "nope" in one_line_error(missing)


def test_a_run_stopped_half_way_leaves_an_index_that_agrees_with_the_cases(store, run, monkeypatch):
    import ctprep.pseudo

    real, calls = ctprep.pseudo.write_pseudo, []

    def write_once(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(ctprep.pseudo, "write_pseudo", write_once)
    with pytest.raises(KeyboardInterrupt):
        pseudo_label(run, store, CPU, progress=False)
    index = read_index(store)
    assert index.loc[index["case_id"] == calls[0], "pseudo_confidence"].notna().all()
    assert not verify(store).damaged


def test_a_unet3d_run_pseudo_labels_with_its_sliding_window_predictions(store, tmp_path):
    import json
    from dataclasses import asdict

    from ctmodel.checkpoint import checkpoint_payload
    from ctmodel.config import ModelConfig
    from ctmodel.nets import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(name="unet3d", width=4, depth=2, patch_depth=4, patch_size=16)  # windows smaller than a case
    run_dir = tmp_path / "run3d"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": asdict(cfg)}))
    atomic_save(checkpoint_payload(build_model(cfg), cfg, LAYOUT, epoch=1, state={}), run_dir / "best.pt")
    report = pseudo_label(run_dir, store, CPU, progress=False)
    assert sorted(report.labelled) == UNLABELED_TRAIN
    opened = SliceStore.open(store)
    for case, mask in predicted_masks(run_dir, store).items():
        np.testing.assert_array_equal(opened.read_pseudo(case), mask)


def test_summary_counts_each_outcome_and_shows_no_mean_without_labelled_cases():
    from ctmodel.pseudolabel import PseudoLabelReport

    report = PseudoLabelReport(labelled={"a": 0.8, "b": 0.9}, left_out={"c": 0.6}, skipped=["d"], lesion_slices=5,
                               seconds=1.5)
    rows = dict(report.summary_rows())
    assert rows["cases pseudo-labelled"] == 2 and rows["left out by confidence"] == 1
    assert rows["skipped as already done"] == 1 and rows["lesion slices found"] == 5
    assert rows["mean confidence"] == pytest.approx(0.85)
    assert dict(PseudoLabelReport(left_out={"c": 0.6}).summary_rows())["mean confidence"] == "-"
    assert report.left_out_rows() == [("c", 0.6)]
