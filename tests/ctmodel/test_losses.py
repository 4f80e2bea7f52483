"""The loss equals 0.7 soft Dice + 0.3 BCE, computed by hand on small tensors."""
from __future__ import annotations

import math

import pytest
import torch

from ctmodel.losses import SMOOTH, DiceBCELoss, soft_dice_loss

LOGITS = [[2.0, -1.0], [0.5, -3.0], [-0.2, 1.5]]  # three "slices" of two pixels
TARGET = [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]


def by_hand(dice_weight: float, bce_weight: float) -> float:
    """The formula of docs/model.md evaluated with plain floats."""
    probs = [[1 / (1 + math.exp(-v)) for v in row] for row in LOGITS]
    pairs = [(p, t) for prow, trow in zip(probs, TARGET) for p, t in zip(prow, trow)]
    inter = sum(p * t for p, t in pairs)
    dice = 1 - (2 * inter + SMOOTH) / (sum(p for p, _ in pairs) + sum(t for _, t in pairs) + SMOOTH)
    bce = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for p, t in pairs) / len(pairs)
    return dice_weight * dice + bce_weight * bce


@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, 0.0), (0.0, 1.0)])
def test_loss_equals_weighted_dice_plus_bce_on_hand_made_tensors(weights):
    logits = torch.tensor(LOGITS)[:, None, :, None]  # (3, 1, 2, 1)
    target = torch.tensor(TARGET)[:, None, :, None]
    loss = DiceBCELoss(*weights)(logits, target)
    assert float(loss) == pytest.approx(by_hand(*weights), rel=1e-6)


def test_dice_is_pooled_over_the_batch_not_averaged_per_slice():
    logits = torch.tensor(LOGITS)[:, None, :, None]
    target = torch.tensor(TARGET)[:, None, :, None]
    per_slice = torch.stack([soft_dice_loss(logits[i:i + 1], target[i:i + 1]) for i in range(3)]).mean()
    assert float(soft_dice_loss(logits, target)) != pytest.approx(float(per_slice))


def test_confident_correct_prediction_has_near_zero_loss_even_on_empty_slices():
    target = torch.zeros(4, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    logits = (target * 2 - 1) * 30.0
    assert float(DiceBCELoss()(logits, target)) < 1e-6
    assert float(soft_dice_loss(torch.full((2, 1, 4, 4), -30.0), torch.zeros(2, 1, 4, 4))) < 1e-6


def test_loss_in_bf16_logits_is_computed_in_fp32():
    logits = torch.tensor(LOGITS)[:, None, :, None]
    target = torch.tensor(TARGET)[:, None, :, None]
    loss = DiceBCELoss()(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
