"""Gradient accumulation: which large-batch step N micro-batches reproduce exactly, and how an epoch groups them."""
from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, strategies as st
from rich.console import Console

from ctmodel.batches import epoch_samples, iterate_batches
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.session import Session, make_session
from ctmodel.train import accumulation_weights, epoch_generators, train_one_epoch
from ctprep.store import SliceStore

torch.set_num_threads(1)
TINY = ModelConfig(width=4, depth=2)
BCE_ONLY = TrainConfig(dice_weight=0.0, bce_weight=1.0, augment=False, device="cpu", lr=1e-2, seed=3)


def quiet() -> Console:
    return Console(file=io.StringIO())


def session_on(store: Path, cfg: TrainConfig, n_samples: int, run_dir: Path) -> Session:
    """A seeded session whose plan epoch holds the first ``n_samples`` slices of case0 (lesion and empty ones)."""
    slices = pd.DataFrame({"epoch": 0, "case_id": "case0", "slice": range(n_samples), "role": "lesion"})
    return make_session(SliceStore.open(store), run_dir, TINY, cfg, slices, [], quiet())


def gradients(session: Session) -> list[torch.Tensor]:
    return [p.grad.clone() for p in session.model.parameters()]


def weights(session: Session) -> list[torch.Tensor]:
    return [p.detach().clone() for p in session.model.parameters()]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest per-tensor ||a - b|| / ||b||: float rounding gives ~1e-6 here, a different loss ~0.1 or more."""
    assert len(a) == len(b)
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b) if y.norm() > 0)


def test_two_micro_batches_of_2_equal_one_batch_of_4_when_the_loss_is_a_per_pixel_mean(tiny_store, tmp_path):
    # BCE is a mean over pixels and InstanceNorm is per sample: 1/2 (mean_2 + mean_2) == mean_4, up to rounding.
    accumulated = session_on(tiny_store, replace(BCE_ONLY, batch_size=2, accumulate=2),
                             4, tmp_path / "a")
    whole = session_on(tiny_store, replace(BCE_ONLY, batch_size=4), 4, tmp_path / "b")
    start = weights(whole)
    assert relative_error(weights(accumulated), start) == 0.0  # same seed, same initial weights
    steps_a, steps_b = [], []
    loss_a, seen_a, _ = train_one_epoch(accumulated, 1, lambda e, s: steps_a.append(s), quiet())
    loss_b, seen_b, _ = train_one_epoch(whole, 1, lambda e, s: steps_b.append(s), quiet())
    assert steps_a == steps_b == [1] and seen_a == seen_b == 4
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert relative_error(gradients(accumulated), gradients(whole)) < 1e-5
    # AdamW's first update is lr * g / (|g| + eps): where |g| is near eps, rounding in g moves single elements,
    # so the updates are compared as whole tensors.
    update_a = [w - w0 for w, w0 in zip(weights(accumulated), start)]
    update_b = [w - w0 for w, w0 in zip(weights(whole), start)]
    assert relative_error(update_a, update_b) < 1e-3


def test_with_batch_dice_a_step_follows_the_mean_of_the_micro_batch_losses_not_the_big_batch_loss(tiny_store,
                                                                                                   tmp_path):
    cfg = TrainConfig(batch_size=2, accumulate=2, augment=False, device="cpu", seed=3)  # 0.7 Dice + 0.3 BCE
    accumulated = session_on(tiny_store, cfg, 4, tmp_path / "a")
    train_one_epoch(accumulated, 1, None, quiet())

    by_hand = session_on(tiny_store, cfg, 4, tmp_path / "b")  # same seed: same initial weights
    samples = epoch_samples(by_hand.data, by_hand.plan[0])
    shuffle, _ = epoch_generators(cfg, 1, by_hand.device)
    losses = [by_hand.loss_fn(by_hand.model(x), y) for x, y in iterate_batches(by_hand.data, samples, 2, shuffle)]
    assert len(losses) == 2
    (sum(losses) / 2).backward()
    assert relative_error(gradients(accumulated), gradients(by_hand)) < 1e-5

    big = session_on(tiny_store, replace(cfg, batch_size=4, accumulate=1), 4, tmp_path / "c")
    train_one_epoch(big, 1, None, quiet())
    # batch-level Dice is one ratio per batch, not additive across micro-batches: a different gradient
    assert relative_error(gradients(accumulated), gradients(big)) > 0.01


def test_a_short_final_group_still_steps_weighted_by_its_own_samples(tiny_store, tmp_path):
    # 5 samples at batch 2: micro-batches of 2, 2, 1; accumulate 2 -> steps after the 2nd and the 3rd.
    assert accumulation_weights(5, 2, 2) == [(0.5, True, False), (0.5, False, True), (1.0, True, True)]
    # 7 samples: 2, 2 | 2, 1 -> the second group weighs its micro-batches 2/3 and 1/3.
    assert accumulation_weights(7, 2, 2)[2:] == [(2 / 3, True, False), (1 / 3, False, True)]
    session = session_on(tiny_store, replace(BCE_ONLY, batch_size=2, accumulate=2),
                         5, tmp_path)
    steps: list[int] = []
    _loss, seen, _ = train_one_epoch(session, 1, lambda e, s: steps.append(s), quiet())
    assert steps == [1, 2] and seen == 5


@given(n_samples=st.integers(1, 200), batch_size=st.integers(1, 20), accumulate=st.integers(1, 8))
def test_every_group_weighs_its_samples_to_one_and_full_groups_weigh_one_over_n(n_samples, batch_size, accumulate):
    plan = accumulation_weights(n_samples, batch_size, accumulate)
    n_micro = math.ceil(n_samples / batch_size)
    assert len(plan) == n_micro
    assert sum(last for _w, _f, last in plan) == math.ceil(n_micro / accumulate)
    groups, current = [], []
    for weight, first, last in plan:
        assert first == (not current)
        current.append(weight)
        if last:
            groups.append(current)
            current = []
    assert not current and all(sum(g) == pytest.approx(1.0) for g in groups)
    full_groups = n_samples // (batch_size * accumulate)
    assert all(w == pytest.approx(1 / accumulate) for g in groups[:full_groups] for w in g)
