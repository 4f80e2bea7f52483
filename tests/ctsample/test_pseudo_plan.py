"""ctsample plan --pseudo: pseudo-labelled patients through the balanced rule (role pseudo), the confidence cut,
the summary rows apart, the pseudo-aware fingerprint, and today's plans unchanged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli import sample_app
from ctprep.errors import PlanError, UsageError
from ctprep.index import case_rows, index_fingerprint, read_index
from ctsample.plan import (PlanConfig, default_plan_path, load_plan, make_plan, off_target_rows, plan_store, summary,
                           summary_rows)
from ctsample.planfile import check_for_store
from ctsample.pseudo import LEFT_OUT_ROW

from conftest import add_pseudo, build_store, one_line_error, phantom, ras_affine


def labeled(case_id: str, lesion_slices: range, n_slices: int, split: str = "train") -> pd.DataFrame:
    """Index rows of one labeled patient whose lesion occupies ``lesion_slices``."""
    return case_rows(case_id, n_slices, [7 if z in lesion_slices else 0 for z in range(n_slices)], split)


def pseudo(case_id: str, lesion_slices: range, n_slices: int, confidence: list[float] | float,
           split: str = "train") -> pd.DataFrame:
    """Index rows of one unlabeled patient whose pseudo-label marks ``lesion_slices``."""
    per_slice = confidence if isinstance(confidence, list) else [confidence] * n_slices
    record = {"lesion_pixels": [5 if z in lesion_slices else 0 for z in range(n_slices)], "confidence": per_slice}
    return case_rows(case_id, n_slices, None, split, pseudo=record)


def hand_index() -> pd.DataFrame:
    """One labeled patient, three pseudo-labelled ones (sure, unsure, lesion-free) and one without a pseudo-label."""
    return pd.concat([labeled("lab", range(10, 14), 30),
                      pseudo("sure", range(20, 22), 40, 0.9),
                      pseudo("unsure", range(5, 8), 20, [0.5] * 10 + [0.7] * 10),  # mean 0.6
                      pseudo("free", range(0), 30, 0.95),
                      case_rows("bare", 25, None, "train")], ignore_index=True)


def rows_of(plan, case_id: str) -> pd.DataFrame:
    return plan.slices[plan.slices["case_id"] == case_id]


def test_pseudo_patient_takes_its_pseudo_lesions_their_neighbours_and_a_ratio_fill_all_as_role_pseudo():
    plan = make_plan(hand_index(), PlanConfig(ratio=2.0, neighbours=1, pseudo=True))
    sure = rows_of(plan, "sure")
    assert set(sure["role"]) == {"pseudo"}
    taken = set(sure["slice"])
    assert {20, 21, 19, 22} <= taken  # both pseudo-lesion slices and their +-1 empty neighbours
    assert len(sure) == 2 + round(2.0 * 2)  # 2 lesion + 4 empty (2 neighbours + 2 far fill)
    report = plan.patients.set_index("case_id")
    assert report.loc["sure", "source"] == "pseudo" and report.loc["sure", "confidence"] == pytest.approx(0.9)
    assert "bare" not in set(plan.slices["case_id"])  # no pseudo-label: never planned


def test_lesion_free_pseudo_patient_gives_its_lesion_free_share_as_pseudo_rows():
    plan = make_plan(hand_index(), PlanConfig(ratio=1.75, lesion_free=0.1, pseudo=True, epochs=3))
    free = rows_of(plan, "free")
    assert free.groupby("epoch").size().tolist() == [3, 3, 3]  # ceil(0.1 * 30) each epoch
    assert set(free["role"]) == {"pseudo"}


def test_natural_ratio_takes_every_slice_of_every_pseudo_patient():
    plan = make_plan(hand_index(), PlanConfig(ratio=None, pseudo=True))
    assert len(rows_of(plan, "sure")) == 40 and len(rows_of(plan, "unsure")) == 20 and len(rows_of(plan, "free")) == 30


def test_confidence_cut_leaves_out_and_reports_the_patient_with_its_mean_confidence():
    plan = make_plan(hand_index(), PlanConfig(pseudo=True, min_confidence=0.65))
    assert "unsure" not in set(plan.slices["case_id"])  # mean(0.5 x 10, 0.7 x 10) = 0.6 < 0.65
    assert {"sure", "free"} <= set(plan.slices["case_id"])
    off = {row[0]: row for row in off_target_rows(plan)}
    assert off["unsure"][-1] == "pseudo confidence 0.600 < --min-confidence 0.65: left out"
    assert [row for row in summary_rows(plan) if row[0] == LEFT_OUT_ROW] == [(LEFT_OUT_ROW, 1, "-", 3, "-", "-", 17,
                                                                             "-", "-", "-")]


def test_no_left_out_row_when_the_cut_leaves_no_patient_out():
    for cut in (0.0, 0.55):  # every pseudo patient's confidence (0.6 and up) reaches both cuts
        plan = make_plan(hand_index(), PlanConfig(pseudo=True, min_confidence=cut))
        assert [row[0] for row in summary_rows(plan)] == ["train", "train (pseudo)", "total"]


def test_cut_above_every_pseudo_patient_keeps_the_labeled_plan_alone():
    plan = make_plan(hand_index(), PlanConfig(pseudo=True, min_confidence=1.0))
    assert set(plan.slices["case_id"]) == {"lab"}
    assert set(plan.patients.loc[plan.patients["source"] == "left out", "case_id"]) == {"sure", "unsure", "free"}


def test_labeled_rows_of_a_pseudo_plan_equal_the_plan_without_pseudo():
    index = hand_index()
    cfg = PlanConfig(ratio=1.0, epochs=3, seed=5)
    plain = make_plan(index, cfg).slices
    with_pseudo = make_plan(index, PlanConfig(ratio=1.0, epochs=3, seed=5, pseudo=True)).slices
    own = with_pseudo[with_pseudo["role"] != "pseudo"].reset_index(drop=True)
    pd.testing.assert_frame_equal(own, plain)  # the pseudo rows draw from their own stream


def test_summary_shows_labelled_and_pseudo_rows_apart_and_the_total_adds_them():
    plan = make_plan(hand_index(), PlanConfig(ratio=2.0, pseudo=True, min_confidence=0.65))
    table = summary(plan).set_index("split")
    assert list(table.index) == ["train", "train (pseudo)", "total"]
    assert table.loc["train", "patients"] == 1 and table.loc["train (pseudo)", "patients"] == 2  # sure, free
    assert table.loc["train (pseudo)", "lesion"] == 2 and table.loc["train (pseudo)", "lesion_free"] == 1
    for column in ("patients", "lesion", "neighbour", "fill", "empty_before"):
        assert table.loc["total", column] == table.loc["train", column] + table.loc["train (pseudo)", column]


def test_pseudo_options_are_recorded_only_with_pseudo_and_name_the_default_file(tmp_path):
    index = hand_index()
    plain = make_plan(index, PlanConfig())
    assert not {"pseudo", "pseudo_weight", "min_confidence"} & set(plain.params)
    assert plain.params["index_fingerprint"] == index_fingerprint(index)
    made = make_plan(index, PlanConfig(pseudo=True, pseudo_weight=0.5, min_confidence=0.8))
    assert (made.params["pseudo"], made.params["pseudo_weight"], made.params["min_confidence"]) == (True, 0.5, 0.8)
    assert made.params["index_fingerprint"] == index_fingerprint(index, pseudo=True) != index_fingerprint(index)
    assert default_plan_path(tmp_path, PlanConfig(pseudo=True)).name == "train-r1.75-k1-e1-s0-pseudo.parquet"
    assert default_plan_path(tmp_path, PlanConfig(pseudo=True, pseudo_weight=0.5, min_confidence=0.8)).name == \
        "train-r1.75-k1-e1-s0-pseudo-w0.5-c0.8.parquet"


def test_pseudo_fingerprint_moves_with_the_pseudo_labels_and_the_plain_one_does_not():
    index = hand_index()
    relabelled = pd.concat([index[index["case_id"] != "sure"], pseudo("sure", range(25, 27), 40, 0.9)])
    less_sure = pd.concat([index[index["case_id"] != "sure"], pseudo("sure", range(20, 22), 40, 0.8)])
    assert index_fingerprint(relabelled) == index_fingerprint(index)  # today's plans stay valid
    assert index_fingerprint(relabelled, pseudo=True) != index_fingerprint(index, pseudo=True)
    assert index_fingerprint(less_sure, pseudo=True) != index_fingerprint(index, pseudo=True)
    assert index_fingerprint(index.iloc[::-1], pseudo=True) == index_fingerprint(index, pseudo=True)


def test_check_accepts_pseudo_rows_on_their_cases_and_refuses_them_elsewhere():
    index = hand_index()
    plan = make_plan(index, PlanConfig(pseudo=True))
    check_for_store(plan.slices, plan.params, index, "p.parquet", "s.zarr")  # passes
    moved = plan.slices.copy()
    moved.loc[moved["case_id"] == "sure", "case_id"] = "bare"
    with pytest.raises(PlanError, match="role pseudo.*'bare', an unlabeled case without a pseudo-label"):
        check_for_store(moved, plan.params, index, "p.parquet", "s.zarr")
    on_labeled = plan.slices.assign(role=np.where(plan.slices["case_id"] == "lab", "pseudo", plan.slices["role"]))
    with pytest.raises(PlanError, match="'lab', a labeled case"):
        check_for_store(on_labeled, plan.params, index, "p.parquet", "s.zarr")


def test_pseudo_without_any_pseudo_label_and_options_without_pseudo_are_refused():
    with pytest.raises(PlanError, match="no pseudo-labelled patient.*ctmodel pseudo-label RUN STORE"):
        make_plan(labeled("lab", range(3, 5), 10), PlanConfig(pseudo=True))
    with pytest.raises(UsageError, match="expected them with --pseudo"):
        PlanConfig(pseudo_weight=0.5)
    with pytest.raises(UsageError, match="--pseudo-weight -1"):
        PlanConfig(pseudo=True, pseudo_weight=-1)
    with pytest.raises(UsageError, match=r"--min-confidence 1.5"):
        PlanConfig(pseudo=True, min_confidence=1.5)


@st.composite
def pseudo_indexes(draw) -> pd.DataFrame:
    """A labeled train patient and 1-5 pseudo-labelled ones: 1-40 slices, random pseudo-lesion runs, random
    per-slice confidence in [0.5, 1]."""
    frames = [labeled("lab", range(2, 5), 12)]
    for number in range(draw(st.integers(1, 5))):
        n_slices = draw(st.integers(1, 40))
        start, length = draw(st.integers(0, n_slices - 1)), draw(st.integers(0, 10))
        confidence = draw(st.lists(st.floats(0.5, 1.0), min_size=n_slices, max_size=n_slices))
        frames.append(pseudo(f"u{number}", range(start, start + length), n_slices, confidence))
    return pd.concat(frames, ignore_index=True)


@settings(max_examples=100, deadline=None)
@given(pseudo_indexes(), st.one_of(st.none(), st.floats(0, 4)), st.integers(0, 2), st.integers(1, 3),
       st.sampled_from([0.0, 0.7, 0.9]))
def test_every_pseudo_lesion_slice_of_a_kept_patient_is_in_every_epoch_and_no_cut_patient_is(index, ratio,
                                                                                          neighbours, epochs, cut):
    plan = make_plan(index, PlanConfig(ratio=ratio, neighbours=neighbours, epochs=epochs, pseudo=True,
                                       min_confidence=cut))
    unlabeled = index[~index["labeled"]]
    confidence = unlabeled["pseudo_confidence"].astype(np.float64).groupby(unlabeled["case_id"]).mean()
    kept = set(confidence.index[confidence >= cut])
    lesion = unlabeled[unlabeled["pseudo_has_lesion"] & unlabeled["case_id"].isin(kept)]
    for _, rows in plan.slices.groupby("epoch"):
        pseudo_rows = rows[rows["role"] == "pseudo"]
        assert set(zip(lesion["case_id"], lesion["slice"])) <= set(zip(pseudo_rows["case_id"], pseudo_rows["slice"]))
        assert set(pseudo_rows["case_id"]) <= kept
        assert not pseudo_rows.duplicated(["case_id", "slice"]).any()
    check_for_store(plan.slices, plan.params, index, "p.parquet", "s.zarr")  # the plan's own checks pass


# ---------------------------------------------------------------- on a store, through the CLI

@pytest.fixture()
def store(tmp_path):
    """Three labeled train patients, one labeled val patient and two unlabeled train patients (no pseudo yet)."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(4)}
    for name, seed in (("u0", 7), ("u1", 8)):
        cases[name] = (phantom(seed=seed)[0], None, ras_affine())
    splits = {**{c: "train" for c in cases}, "case3": "val"}
    return build_store(tmp_path / "store.zarr", cases, splits)


def lesion_at(store, slices: list[int]) -> np.ndarray:
    """A pseudo mask on the store grid with a 3 x 3 lesion in ``slices``."""
    n = int(read_index(store).groupby("case_id")["n_slices"].first()["u0"])
    mask = np.zeros((n, 16, 16), np.uint8)
    mask[slices, 6:9, 6:9] = 1
    return mask


def run(*args):
    return CliRunner().invoke(sample_app, [str(a) for a in args])


def test_default_plan_of_a_store_with_pseudo_labels_is_todays_plan(store, tmp_path):
    before, _ = plan_store(store, PlanConfig(epochs=2), tmp_path / "before.parquet")
    add_pseudo(store, "u0", lesion_at(store, [3, 4]), [0.9] * lesion_at(store, []).shape[0])
    after, _ = plan_store(store, PlanConfig(epochs=2), tmp_path / "after.parquet")
    assert after.params == before.params  # no pseudo keys, the fingerprint of today
    pd.testing.assert_frame_equal(load_plan(tmp_path / "after.parquet").slices,
                                  load_plan(tmp_path / "before.parquet").slices)
    assert "pseudo" not in set(after.slices["role"])


def test_cli_plan_pseudo_prints_the_rows_apart_and_a_stale_plan_is_refused(store, tmp_path):
    n = lesion_at(store, []).shape[0]
    add_pseudo(store, "u0", lesion_at(store, [3, 4]), [0.9] * n)
    add_pseudo(store, "u1", lesion_at(store, [5]), [0.55] * n)
    result = run("plan", store, "--pseudo", "--min-confidence", "0.6", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "train (pseudo)" in result.output and LEFT_OUT_ROW in result.output
    assert "pseudo confidence 0.550 < --min-confidence 0.6: left out" in result.output
    path = store / "plans" / "train-r1.75-k1-e2-s0-pseudo-c0.6.parquet"
    plan = load_plan(path)
    assert set(plan.slices.loc[plan.slices["role"] == "pseudo", "case_id"]) == {"u0"}
    check_for_store(plan.slices, plan.params, read_index(store), str(path), store)  # fresh: passes
    add_pseudo(store, "u0", lesion_at(store, [6]), [0.9] * n)  # re-pseudo-labelled by another run
    with pytest.raises(PlanError, match="before its masks, splits or pseudo-labels changed"):
        check_for_store(plan.slices, plan.params, read_index(store), str(path), store)


def test_cli_plan_pseudo_on_a_store_without_pseudo_labels_is_one_line(store):
    result = run("plan", store, "--pseudo")
    assert result.exit_code == 1
    assert "ctmodel pseudo-label RUN STORE" in one_line_error(result)
    result = run("plan", store, "--pseudo-weight", "2")
    assert result.exit_code == 2 and "expected them with --pseudo" in one_line_error(result)  # a usage error
