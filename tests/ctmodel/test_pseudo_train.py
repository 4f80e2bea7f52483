"""ctmodel train on plans with pseudo rows: the resident loader brings pseudo-labels as masks, their loss is
weighted per sample by --pseudo-weight (weight 1: today's path), and the weights follow the samples."""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from cli import model_app
from conftest import add_pseudo, build_store, one_line_error, phantom, ras_affine
from ctmodel.batches import epoch_samples, iterate_batches, load_resident, volumetric_subset
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.losses import DiceBCELoss, weighted_bce, weighted_dice_loss
from ctmodel.runfolder import with_plan_rule
from ctmodel.train import train
from ctprep.errors import PlanError, UsageError
from ctprep.index import read_index
from ctprep.store import SliceStore
from ctsample.plan import PlanConfig, plan_store

torch.set_num_threads(1)
TINY = ModelConfig(width=4, depth=2)
FAST = TrainConfig(epochs=1, batch_size=8, lr=1e-2, augment=False, device="cpu", seed=0)


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture()
def store(tmp_path):
    """Three labeled train patients, one labeled val patient, and two unlabeled train patients of whom u0 has a
    pseudo-label (a 3 x 3 lesion in slices 3 and 4) and u1 none."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(4)}
    for name, seed in (("u0", 7), ("u1", 8)):
        cases[name] = (phantom(seed=seed)[0], None, ras_affine())
    path = build_store(tmp_path / "store.zarr", cases, {**{c: "train" for c in cases}, "case3": "val"})
    n = int(read_index(path).groupby("case_id")["n_slices"].first()["u0"])
    mask = np.zeros((n, 16, 16), np.uint8)
    mask[[3, 4], 6:9, 6:9] = 1
    add_pseudo(path, "u0", mask, [0.9] * n)
    return path


# ---------------------------------------------------------------- the weighted loss, on hand values

def test_weighted_loss_on_hand_values():
    # p = sigmoid(0) = 0.5 everywhere; sample A (w 1) targets [1, 0], sample B (w 0.5) targets [1, 1].
    logits = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    weight = torch.tensor([1.0, 0.5])
    v = (1.0, 0.5)  # the weights relative to the largest
    intersection = v[0] * (0.5 * 1) + v[1] * (0.5 * 2)  # sum_i v_i sum(p t)
    sum_p, sum_t = v[0] * 1.0 + v[1] * 1.0, v[0] * 1 + v[1] * 2
    dice = 0.75 * (1 - (2 * intersection + 1) / (sum_p + sum_t + 1))  # mean(w) x (1 - ratio), smooth 1
    assert float(weighted_dice_loss(logits, target, weight)) == pytest.approx(dice)  # 0.75 x 1/3
    bce = (1 * 2 + 0.5 * 2) * math.log(2) / 4  # every pixel's BCE is ln 2; sum_i w_i sum(bce_i) / (B x pixels)
    assert float(weighted_bce(logits, target, weight)) == pytest.approx(bce)
    assert float(DiceBCELoss()(logits, target, weight)) == pytest.approx(0.7 * dice + 0.3 * bce)


def test_a_batch_of_pseudo_rows_alone_is_scaled_by_the_weight():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 1, 6, 6, generator=generator, requires_grad=True)
    target = (torch.rand(8, 1, 6, 6, generator=generator) > 0.6).float()
    plain = DiceBCELoss()(logits, target)
    (grad_plain,) = torch.autograd.grad(plain, logits)
    for w in (0.1, 0.5):
        weighted = DiceBCELoss()(logits, target, torch.full((8,), w))
        (grad,) = torch.autograd.grad(weighted, logits)
        assert float(weighted) == pytest.approx(w * float(plain), rel=1e-5)
        assert torch.allclose(grad, w * grad_plain, rtol=1e-4, atol=1e-9)


def test_weight_one_equals_the_plain_loss_and_weight_zero_the_labeled_samples_alone():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 7, 9, generator=generator)
    target = (torch.rand(5, 1, 7, 9, generator=generator) > 0.7).float()
    loss = DiceBCELoss()
    assert float(loss(logits, target, torch.ones(5))) == pytest.approx(float(loss(logits, target)), rel=1e-6)
    pseudo = torch.tensor([False, True, False, True, True])
    zeroed = torch.where(pseudo, 0.0, 1.0)
    share = float((~pseudo).float().mean())  # the labeled samples' share of the batch: each counts 1/B of it
    assert float(loss(logits, target, zeroed)) == pytest.approx(
        share * float(loss(logits[~pseudo], target[~pseudo])), rel=1e-6)


def test_all_zero_weights_give_zero_loss_not_nan():
    logits = torch.randn(2, 1, 3, 3, requires_grad=True)
    loss = DiceBCELoss()(logits, torch.ones(2, 1, 3, 3), torch.zeros(2))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------- the resident loader

def test_resident_masks_of_pseudo_cases_are_the_stored_pseudo_labels(store):
    opened = SliceStore.open(store)
    data = load_resident(opened, ["case0", "u0"], torch.device("cpu"), show_progress=False, unlabeled="pseudo")
    assert torch.equal(data.volume("u0")[1], torch.from_numpy(opened.read_pseudo("u0")))
    assert torch.equal(data.volume("case0")[1], torch.from_numpy(opened.read_mask("case0")))  # labeled: its mask


def test_resident_loader_refuses_unlabeled_cases_by_default_and_those_without_a_pseudo_label(store):
    opened = SliceStore.open(store)
    with pytest.raises(PlanError, match="'u0' is unlabeled"):
        load_resident(opened, ["u0"], torch.device("cpu"), show_progress=False)
    with pytest.raises(PlanError, match="'u1' is unlabeled and has no pseudo-label.*ctmodel pseudo-label RUN"):
        load_resident(opened, ["u1"], torch.device("cpu"), show_progress=False, unlabeled="pseudo")
    with pytest.raises(UsageError, match="--target union"):
        load_resident(opened, ["u0"], torch.device("cpu"), show_progress=False, target="union", unlabeled="pseudo")


# ---------------------------------------------------------------- weights follow the samples

def pseudo_rows(n_labeled: int = 6, n_pseudo: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"epoch": 0, "case_id": ["case0"] * n_labeled + ["u0"] * n_pseudo,
                         "slice": list(range(n_labeled)) + list(range(n_pseudo)),
                         "role": ["lesion"] * n_labeled + ["pseudo"] * n_pseudo})


def test_weight_one_builds_no_weights_and_batches_stay_pairs(store):
    data = load_resident(SliceStore.open(store), ["case0", "u0"], torch.device("cpu"), show_progress=False,
                         unlabeled="pseudo")
    samples = epoch_samples(data, pseudo_rows(), 1.0)
    assert samples.weight is None
    assert all(len(batch) == 2 for batch in iterate_batches(data, samples, 4, torch.Generator().manual_seed(0)))


def test_weights_follow_their_samples_through_the_shuffle_and_the_unet3d_subset(store):
    data = load_resident(SliceStore.open(store), ["case0", "u0"], torch.device("cpu"), show_progress=False,
                         unlabeled="pseudo")
    samples = epoch_samples(data, pseudo_rows(), 0.25)
    every = data.stacks(samples.case_pos, samples.slice_index)  # (n, 3, S, S): each sample's own input
    expected = np.where(np.arange(11) >= 6, 0.25, 1.0)
    seen = 0
    for x, _y, w in iterate_batches(data, samples, 4, torch.Generator().manual_seed(3)):
        for stack, weight in zip(x, w):
            match = [j for j in range(11) if torch.equal(every[j], stack)]
            assert len(match) == 1 and float(weight) == expected[match[0]]
            seen += 1
    assert seen == 11
    subset = volumetric_subset(samples, 4, 2, torch.Generator().manual_seed(1))
    u0 = data.case_ids.index("u0")
    assert torch.equal(subset.weight, torch.where(subset.case_pos == u0, 0.25, 1.0))


# ---------------------------------------------------------------- training on a pseudo plan

class Killed(Exception):
    """Stands in for SIGKILL in the middle of the second epoch."""


def kill_in_epoch_2(epoch: int, _step: int) -> None:
    if epoch == 2:
        raise Killed


def test_train_pseudo_builds_the_plan_trains_records_the_weight_and_resumes(store, tmp_path):
    cfg = replace(FAST, epochs=2, pseudo=True, pseudo_weight=0.5, accumulate=2, batch_size=4)
    with pytest.raises(Killed):
        train(store, TINY, cfg, out=tmp_path / "run", on_step=kill_in_epoch_2, console=quiet())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["pseudo_weight"] == 0.5 and config["plan"]["params"]["pseudo"] is True
    plan = pd.read_parquet(tmp_path / "run" / "plan.parquet")
    assert set(plan.loc[plan["role"] == "pseudo", "case_id"]) == {"u0"}
    resumed = train(store, ModelConfig(), TrainConfig(), out=tmp_path / "run", resume=True, console=quiet())
    assert [row["epoch"] for row in resumed.rows] == [1, 2]  # the pseudo plan passes the resume check
    assert all(math.isfinite(row["train_loss"]) for row in resumed.rows)


def test_train_on_a_pseudo_plan_file_takes_the_weight_from_the_plan(store, tmp_path):
    made, path = plan_store(store, PlanConfig(pseudo=True, pseudo_weight=0.25), tmp_path / "p.parquet")
    assert with_plan_rule(FAST, made.params).pseudo_weight == 0.25
    result = train(store, TINY, FAST, out=tmp_path / "run", plan_path=path, console=quiet())
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["pseudo_weight"] == 0.25


def test_a_pseudo_plan_made_before_re_pseudo_labelling_is_refused_as_stale(store, tmp_path):
    _made, path = plan_store(store, PlanConfig(pseudo=True), tmp_path / "p.parquet")
    n = int(read_index(store).groupby("case_id")["n_slices"].first()["u0"])
    add_pseudo(store, "u0", np.zeros((n, 16, 16), np.uint8), [0.8] * n)  # another run's pseudo-label
    with pytest.raises(PlanError, match="does not match.*pseudo-labels changed"):
        train(store, TINY, FAST, out=tmp_path / "run", plan_path=path, console=quiet())


def test_cli_train_pseudo_errors_are_one_line(store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(model_app, ["train", str(store), "--pseudo", "--target", "union", "--out",
                                       str(tmp_path / "r1")])
    assert result.exit_code == 2 and "--target consensus" in one_line_error(result)
    bare = tmp_path / "bare.zarr"
    build_store(bare, {"a": (*phantom(seed=1), ras_affine()), "b": (*phantom(seed=2), ras_affine())},
                {"a": "train", "b": "val"})
    result = runner.invoke(model_app, ["train", str(bare), "--pseudo", "--epochs", "1", "--out",
                                       str(tmp_path / "r2")])
    assert result.exit_code == 1 and "ctmodel pseudo-label RUN STORE" in one_line_error(result)
    result = runner.invoke(model_app, ["train", str(store), "--pseudo-weight", "2", "--out", str(tmp_path / "r3")])
    assert result.exit_code == 2 and "expected them with --pseudo" in one_line_error(result)
    _made, path = plan_store(store, PlanConfig(pseudo=True), tmp_path / "p.parquet")
    result = runner.invoke(model_app, ["train", str(store), "--plan", str(path), "--pseudo-weight", "2", "--out",
                                       str(tmp_path / "r4")])
    assert result.exit_code == 2 and "--plan FILE already fixed them" in one_line_error(result)
