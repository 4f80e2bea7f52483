"""The training loss: dice_weight * soft Dice + bce_weight * BCE-with-logits (0.7 / 0.3 in the study)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1.0  # added to numerator and denominator: an all-empty batch predicted empty has Dice 1 (loss 0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """Batch-level soft Dice loss: 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits).

    The sums run over the whole batch (every pixel of every sample), not per sample, so empty slices
    do not each contribute a 0/0 term.
    """
    probs = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


class DiceBCELoss(torch.nn.Module):
    """loss = dice_weight * soft_dice_loss + bce_weight * mean BCE-with-logits."""

    def __init__(self, dice_weight: float = 0.7, bce_weight: float = 0.3, smooth: float = SMOOTH) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_loss(logits, target, self.smooth)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.dice_weight * dice + self.bce_weight * bce
