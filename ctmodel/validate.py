"""Validation on whole volumes each epoch: loss, 3-D Dice per case, slice-level Dice / IoU (on the device).

Conventions: a case (or slice) whose truth and prediction are both empty scores Dice = IoU = 1.0, so every
case and slice counts in the means (as ``ctmodel.metrics`` does); prediction = sigmoid(logit) > 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ctmodel.batches import ResidentVolumes
from ctmodel.inference import batched_logits


@dataclass
class ValResult:
    """Validation figures of one epoch (NaN when there are no val cases)."""

    loss: float = math.nan  # mean of the per-batch losses, weighted by batch size
    dice_3d: float = math.nan  # mean over val cases of the 3-D Dice
    dice_slice: float = math.nan  # mean over every val slice of the 2-D Dice
    iou_slice: float = math.nan
    per_case: dict[str, float] = field(default_factory=dict)  # case_id -> 3-D Dice


def overlap_scores(pred: torch.Tensor, truth: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of boolean masks reduced over ``dims``; 1.0 where both are empty."""
    inter = (pred & truth).sum(dims).double()
    total = pred.sum(dims).double() + truth.sum(dims).double()
    union = total - inter
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return dice, iou


@torch.no_grad()
def validate(model: nn.Module, data: ResidentVolumes, case_ids: list[str], loss_fn: nn.Module,
             batch_size: int = 32, precision: str = "bf16") -> ValResult:
    """Score ``model`` on the whole volumes of ``case_ids`` (resident in ``data``)."""
    if not case_ids:
        return ValResult()
    was_training = model.training
    model.eval()
    loss_sum, n_seen, dice_sum, iou_sum, per_case = 0.0, 0, 0.0, 0.0, {}
    for case_id in case_ids:
        volume, mask = data.volume(case_id)
        pred = torch.empty(mask.shape, dtype=torch.bool, device=mask.device)
        for centres, logits in batched_logits(model, volume, batch_size, precision):
            target = mask[centres][:, None].float()
            loss_sum += float(loss_fn(logits, target)) * len(centres)
            n_seen += len(centres)
            pred[centres] = logits[:, 0] > 0
        truth = mask.bool()
        per_case[case_id] = float(overlap_scores(pred, truth, (0, 1, 2))[0])
        dice, iou = overlap_scores(pred, truth, (1, 2))
        dice_sum, iou_sum = dice_sum + float(dice.sum()), iou_sum + float(iou.sum())
    model.train(was_training)
    return ValResult(loss=loss_sum / n_seen, dice_3d=sum(per_case.values()) / len(per_case),
                     dice_slice=dice_sum / n_seen, iou_slice=iou_sum / n_seen, per_case=per_case)
