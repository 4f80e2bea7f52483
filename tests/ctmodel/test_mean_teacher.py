"""The mean teacher (--semi mean-teacher): EMA update, ramp-up and consistency on hand values, the teacher-balanced
unlabeled draw, checkpoints with a teacher, exact resume, and `--semi none` left exactly as before."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from cli import model_app
from conftest import build_store, one_line_error, phantom, ras_affine
from ctmodel.batches import ResidentVolumes, load_resident, resident_bytes
from ctmodel.checkpoint import load_run
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.semi import (MeanTeacher, StrongConfig, balanced_slices, consistency_loss, ema_alpha, ema_update,
                          make_teacher, rampup_weight, unlabeled_train_cases, weak_and_strong)
from ctmodel.train import train
from ctprep.errors import PlanError, UsageError
from ctprep.splits import fold_view
from ctprep.store import SliceStore
from ctsample.plan import PlanConfig

torch.set_num_threads(1)
TINY = ModelConfig(width=4, depth=2)
MT = TrainConfig(epochs=2, batch_size=4, lr=3e-3, augment=True, deterministic=True, seed=1, semi="mean-teacher",
                 rampup=1)
UNLABELED = ("case5", "case6")


@pytest.fixture
def semi_store(tmp_path: Path) -> Path:
    """tiny_store plus two unlabeled train cases (case5, case6) and one unlabeled test case (case7)."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(8)}
    cases = {k: (hu, None if k in (*UNLABELED, "case7") else mask, a) for k, (hu, mask, a) in cases.items()}
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test",
              "case5": "train", "case6": "train", "case7": "test"}
    return build_store(tmp_path / "semi.zarr", cases, splits)


def linear(weight: list[float], bias: float, buffer: float) -> nn.Linear:
    """A 2 -> 1 linear layer with the given weights and one buffer (stands in for norm statistics)."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.fill_(bias)
    layer.register_buffer("stat", torch.tensor([buffer]))
    return layer


def test_ema_alpha_warms_up_as_one_minus_one_over_step_plus_one_then_caps_at_ema():
    assert [ema_alpha(step, 0.99) for step in (0, 1, 3, 9)] == [0.0, 0.5, 0.75, 0.9]
    assert ema_alpha(99, 0.99) == 0.99 and ema_alpha(5000, 0.99) == 0.99  # 1 - 1/100 = 0.99 is where the cap meets
    assert ema_alpha(1, 0.3) == 0.3


def test_ema_update_on_two_linears_mixes_parameters_and_copies_buffers():
    teacher, student = linear([1.0, 2.0], 4.0, buffer=7.0), linear([3.0, -2.0], 0.0, buffer=-1.0)
    ema_update(teacher, student, alpha=0.75)  # 0.75 t + 0.25 s, all dyadic: exact in float32
    assert teacher.weight.tolist() == [[0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * -2]] == [[1.5, 1.0]]
    assert teacher.bias.tolist() == [3.0] and teacher.stat.tolist() == [-1.0]
    assert student.weight.tolist() == [[3.0, -2.0]]  # the student is read only


def test_the_first_ema_step_copies_the_student_and_the_second_averages_the_two():
    teacher, student = linear([1.0, 2.0], 4.0, 0.0), linear([3.0, -2.0], 0.0, 0.0)
    mt = MeanTeacher(teacher, [], replace(MT, ema=0.99))
    mt.update(student)  # step 0: alpha 0
    assert teacher.weight.tolist() == [[3.0, -2.0]] and mt.global_step == 1
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[5.0, 0.0]]))
    mt.update(student)  # step 1: alpha 0.5
    assert teacher.weight.tolist() == [[4.0, -1.0]] and mt.global_step == 2


def test_rampup_is_exp_minus_five_at_the_start_and_one_from_the_end_of_the_ramp():
    assert rampup_weight(0.0, 5) == math.exp(-5.0)
    assert rampup_weight(2.5, 5) == pytest.approx(math.exp(-5.0 * 0.5 ** 2))  # t = 0.5
    assert rampup_weight(5.0, 5) == 1.0 and rampup_weight(12.0, 5) == 1.0  # t clipped to 1
    assert rampup_weight(-1.0, 5) == math.exp(-5.0)  # t clipped to 0
    assert rampup_weight(0.0, 0) == 1.0  # no ramp-up


def test_consistency_is_the_mean_squared_difference_of_probabilities():
    student, teacher = torch.logit(torch.tensor([0.5, 0.75])), torch.logit(torch.tensor([0.25, 0.75]))
    expected = ((0.5 - 0.25) ** 2 + 0.0) / 2
    assert float(consistency_loss(student, teacher)) == pytest.approx(expected, abs=1e-6)


def test_the_teacher_gets_no_gradient_and_the_student_does():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(2, 1, 1))
    teacher = make_teacher(student)
    x = torch.rand(2, 3, 8, 8)
    consistency_loss(student(x + 0.1), teacher(x)).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    leaf = torch.zeros(4, requires_grad=True)  # even a teacher output that tracks gradients is detached
    consistency_loss(torch.ones(4, requires_grad=True), leaf).backward()
    assert leaf.grad is None


def test_balanced_draw_takes_lesions_neighbours_and_a_ratio_fill_per_case():
    lesion = np.zeros(10, bool)
    lesion[[4, 5]] = True
    empty = np.zeros(10, bool)
    rule = PlanConfig(ratio=1.75, neighbours=1, lesion_free=0.1)
    picked = balanced_slices([lesion, empty], rule, epoch=1)
    # case 0: 2 lesion slices -> round(1.75 * 2) = 4 empty slices: neighbours 3 and 6, plus 2 of the far slices
    assert {3, 4, 5, 6} <= set(picked[0]) and len(picked[0]) == 2 + 4
    assert set(picked[0]) - {3, 4, 5, 6} <= {0, 1, 2, 7, 8, 9}
    assert len(picked[1]) == math.ceil(0.1 * 10)  # lesion-free: its share
    assert [p.tolist() for p in balanced_slices([lesion, empty], rule, epoch=1)] == [p.tolist() for p in picked]
    everything = [np.arange(10), np.arange(10)]
    for flags, ratio in (([empty, empty], 1.75), ([lesion, empty], None)):  # no lesion predicted / natural ratio
        assert [p.tolist() for p in balanced_slices(flags, PlanConfig(ratio=ratio), epoch=1)] == \
            [p.tolist() for p in everything]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=30), min_size=1, max_size=4),
       st.floats(0.0, 4.0), st.integers(0, 3), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_balanced_draw_keeps_every_lesion_and_neighbour_and_meets_the_target(cases, ratio, neighbours, share, seed):
    flags = [np.asarray(c) for c in cases]
    picked = balanced_slices(flags, PlanConfig(ratio=ratio, neighbours=neighbours, lesion_free=share, seed=seed),
                             epoch=1)
    if not any(f.any() for f in flags):  # no predicted lesion anywhere: uniform over every slice
        assert all(p.tolist() == list(range(len(f))) for p, f in zip(picked, flags))
        return
    for lesion, chosen in zip(flags, picked):
        z = np.arange(len(lesion))
        lesion_z = np.flatnonzero(lesion)
        near = [i for i in z if not lesion[i] and lesion_z.size and np.abs(lesion_z - i).min() <= neighbours]
        assert np.all(np.diff(chosen) > 0) and set(lesion_z) | set(near) <= set(chosen.tolist())
        target = math.floor(ratio * lesion_z.size + 0.5) if lesion_z.size else math.ceil(share * len(z) - 1e-9)
        empty = len(chosen) - lesion_z.size
        assert empty == min(max(target, len(near)), len(z) - lesion_z.size)


class Bright(nn.Module):
    """A fake teacher: the centre slice's intensity as a logit around 0.5 (p >= 0.5 exactly where it is bright)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 100.0


def test_epoch_draw_keeps_the_balance_the_teacher_predicts():
    lesion_rows = {(0, 5), (0, 6), (1, 2)}  # (case, slice) the fake teacher calls lesion slices
    images = torch.zeros(2 * 12, 4, 4, dtype=torch.float16)
    for case, z in lesion_rows:
        images[case * 12 + z, 1, 1] = 1.0
    data = ResidentVolumes(images=images, masks=torch.zeros(24, 4, 4, dtype=torch.uint8), case_ids=["a", "b"],
                           starts=torch.tensor([0, 12]), n_slices=torch.tensor([12, 12]), device=torch.device("cpu"))
    mt = MeanTeacher(Bright(), [0, 1], replace(MT, ratio=1.0, neighbours=1))
    mt.begin_epoch(data, epoch=1, n_samples=100, batch_size=5, precision="fp32")
    drawn = list(zip(mt.draw.case_pos.tolist(), mt.draw.slice_index.tolist()))
    distinct = set(drawn)
    # case 0: lesion 5, 6; neighbours 4, 7 = round(1.0 * 2) empty: no fill. case 1: lesion 2; neighbours 1, 3 (all
    # neighbours are kept, above the target round(1.0 * 1) = 1): no fill either; the set is exactly these 7 slices
    assert distinct == lesion_rows | {(0, 4), (0, 7), (1, 1), (1, 3)}
    assert mt.draw.lesion_slices == 3 and len(drawn) == 100
    lesion_share = sum(row in lesion_rows for row in drawn) / len(drawn)
    assert abs(lesion_share - 3 / 7) < 0.05  # cycling over the set keeps its 3 lesion : 4 empty balance


def test_weak_and_strong_views_share_their_geometry():
    x = torch.rand(3, 3, 16, 16)
    weak, strong = weak_and_strong(x, torch.Generator().manual_seed(0), geometry=False)
    assert torch.equal(weak, x) and not torch.equal(strong, x)
    ramp = torch.arange(16.0)[:, None] * 16 + torch.arange(16.0)[None, :] ** 2  # asymmetric: a flip or turn shows
    x = (0.9 * ramp / ramp.max()).expand(3, 3, 16, 16).contiguous()  # below 1: the final clip changes nothing
    identity = StrongConfig(contrast=(1.0, 1.0), brightness=0.0, noise_std=0.0)  # the strong view's extras off
    weak, strong = weak_and_strong(x, torch.Generator().manual_seed(0), geometry=True, strong=identity)
    assert torch.equal(strong, weak)  # the same geometry, pixel for pixel
    assert all(not torch.equal(w, v) for w, v in zip(weak, x))  # and it was applied to every stack


def test_resident_loader_refuses_unlabeled_cases_or_loads_them_with_empty_masks(semi_store):
    store = SliceStore.open(semi_store)
    with pytest.raises(PlanError, match="case5"):
        load_resident(store, ["case0", "case5"], torch.device("cpu"), show_progress=False)
    data = load_resident(store, ["case0", "case5"], torch.device("cpu"), show_progress=False, unlabeled="empty",
                         target="union")
    image, mask = data.volume("case5")
    assert torch.equal(image, torch.from_numpy(store.read_image("case5"))) and int(mask.sum()) == 0
    assert data.nbytes() - data.raters.numel() == resident_bytes(store, int(data.n_slices.sum()))
    assert data.raters.shape[0] == int(data.n_slices[0])  # the labeled case's one rater; none for case5


def test_mean_teacher_run_writes_both_networks_and_its_metrics(semi_store, tmp_path):
    result = train(semi_store, TINY, MT, out=tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    plan = pd.read_parquet(tmp_path / "run" / "plan.parquet")
    steps = sum(-(-len(rows) // MT.batch_size) for _, rows in plan.groupby("epoch"))  # optimizer steps, 2 epochs
    assert payload["global_step"] == steps
    student, teacher = payload["model"], payload["teacher"]
    assert student.keys() == teacher.keys() and any(not torch.equal(student[k], teacher[k]) for k in student)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(metrics.columns[-2:]) == ["consistency_loss", "unlabeled_lesion_slices"]
    n_unlabeled = sum(SliceStore.open(semi_store).read_image(c).shape[0] for c in UNLABELED)
    assert metrics["unlabeled_lesion_slices"].between(0, n_unlabeled).all()
    assert (metrics["consistency_loss"] > 0).all()
    loaded = load_run(tmp_path / "run", "last")  # evaluate/predict load the student as before
    assert all(torch.equal(loaded.model.state_dict()[k], student[k]) for k in student)
    assert result.summary["epochs"] == 2


class Killed(Exception):
    """Stands in for SIGKILL in the middle of an epoch."""


def kill_in_epoch_two(epoch: int, step: int) -> None:
    if (epoch, step) == (2, 1):
        raise Killed


def test_resume_with_a_teacher_ends_like_an_uninterrupted_run(semi_store, tmp_path):
    train(semi_store, TINY, MT, out=tmp_path / "whole")
    with pytest.raises(Killed):  # last.pt holds epoch 1: student, teacher and global step
        train(semi_store, TINY, MT, out=tmp_path / "split", on_step=kill_in_epoch_two)
    train(semi_store, ModelConfig(), TrainConfig(), out=tmp_path / "split", resume=True)
    whole, split = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("whole", "split"))
    for net in ("model", "teacher"):
        assert all(torch.equal(whole[net][k], split[net][k]) for k in whole[net]), net
    assert whole["global_step"] == split["global_step"] and whole["epoch"] == split["epoch"] == 2
    timing = ["seconds", "samples_per_s", "peak_mem_mb"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns=timing),
                                  pd.read_csv(tmp_path / "split" / "metrics.csv").drop(columns=timing))


def test_zero_consistency_trains_the_student_exactly_as_semi_none(semi_store, tmp_path):
    one = replace(MT, epochs=1)
    plain = train(semi_store, TINY, replace(one, semi="none", rampup=5), out=tmp_path / "plain")
    weightless = train(semi_store, TINY, replace(one, consistency=0.0), out=tmp_path / "zero")
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("plain", "zero"))
    assert "teacher" not in a and "global_step" not in a
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the consistency term is all it adds
    assert plain.rows[0]["train_loss"] == weightless.rows[0]["train_loss"]
    assert list(pd.read_csv(tmp_path / "plain" / "metrics.csv").columns)[-1] == "peak_mem_mb"


def test_cli_refuses_a_store_without_unlabeled_train_cases_and_unet3d_in_one_line(tiny_store, semi_store, tmp_path):
    runner = CliRunner()
    none = runner.invoke(model_app, ["train", str(tiny_store), "--semi", "mean-teacher", "--width", "4",
                                     "--device", "cpu", "--out", str(tmp_path / "a")])
    assert none.exit_code != 0 and f"{tiny_store}: --semi mean-teacher" in one_line_error(none)
    cube = runner.invoke(model_app, ["train", str(semi_store), "--semi", "mean-teacher", "--model", "unet3d",
                                     "--device", "cpu", "--out", str(tmp_path / "b")])
    assert cube.exit_code != 0 and "--model unet3d" in one_line_error(cube)
    alone = runner.invoke(model_app, ["train", str(semi_store), "--ema", "0.9"])
    assert alone.exit_code != 0 and "expected --semi mean-teacher" in one_line_error(alone)
    with pytest.raises(UsageError, match="--ema 1.0"):
        TrainConfig(semi="mean-teacher", ema=1.0)


def test_cli_trains_a_mean_teacher_and_resume_refuses_a_changed_option(semi_store, tmp_path):
    out = tmp_path / "cli"
    args = ["train", str(semi_store), "--semi", "mean-teacher", "--ema", "0.9", "--rampup", "0", "--epochs", "1",
            "--width", "4", "--depth", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(model_app, args)
    assert result.exit_code == 0, result.output
    assert '"semi": "mean-teacher"' in (out / "config.json").read_text()
    changed = CliRunner().invoke(model_app, ["train", str(semi_store), "--out", str(out), "--resume",
                                             "--semi", "mean-teacher", "--ema", "0.5"])
    assert changed.exit_code == 1 and "ema=0.9, not 0.5" in one_line_error(changed)


def test_under_a_fold_only_the_train_side_unlabeled_cases_are_drawn(semi_store):
    index = SliceStore.open(semi_store).index()
    folds = {"case0": 0, "case1": 1, "case2": 1, "case5": 0, "case6": 1}  # val and test cases keep no fold
    index["fold"] = index["case_id"].map(folds).fillna(-1).astype(index["fold"].dtype)
    assert unlabeled_train_cases(fold_view(index, 0, semi_store), semi_store, 0) == ["case6"]
    assert unlabeled_train_cases(fold_view(index, 1, semi_store), semi_store, 1) == ["case5"]
    assert unlabeled_train_cases(index, semi_store) == ["case5", "case6"]  # never the unlabeled test case7
    index.loc[index["case_id"] == "case6", "fold"] = 0
    with pytest.raises(UsageError, match="fold 0's train side, found none"):
        unlabeled_train_cases(fold_view(index, 0, semi_store), semi_store, 0)


def test_unet2d_with_a_rater_target_trains_with_a_teacher(semi_store, tmp_path):
    result = train(semi_store, ModelConfig(name="unet2d", width=4, depth=2, context=3),
                   replace(MT, epochs=1, target="union"), out=tmp_path / "u")
    assert result.rows[0]["consistency_loss"] > 0 and "teacher" in torch.load(tmp_path / "u" / "last.pt",
                                                                             weights_only=True)
