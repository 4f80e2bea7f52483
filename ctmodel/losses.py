"""The training loss: dice_weight * soft Dice + bce_weight * BCE-with-logits (0.7 / 0.3 in the study); for
``--target ugs`` UGS-Net's sum over its heads (UGSLoss). Targets may be soft (floats in [0, 1]). With per-sample
weights (pseudo rows weighted by --pseudo-weight), the weighted forms of both terms (docs/model.md). Across
torchrun ranks, GlobalDiceBCELoss: the same loss over the global batch (docs/scaling.md)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SMOOTH = 1.0  # added to numerator and denominator: an all-empty batch predicted empty has Dice 1 (loss 0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """Batch-level soft Dice loss: 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits).

    The sums run over the whole batch (every pixel of every sample), not per sample, so empty slices
    do not each contribute a 0/0 term. A soft target t in [0, 1] enters the same formula (sum(p t) is the soft
    intersection); unlike BCE its minimum is not at p = t but pushes p towards 0/1 (docs/raters.md).
    """
    probs = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (probs * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probs.sum() + target.sum() + smooth)


def weighted_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       smooth: float = SMOOTH) -> torch.Tensor:
    """Batch-level soft Dice loss with per-sample weights w (B,): mean(w) * (1 - (2 sum_i v_i sum(p_i t_i) +
    smooth) / (sum_i v_i sum(p_i) + sum_i v_i sum(t_i) + smooth)) with v = w / max(w). The ratio is the Dice of
    the relatively weighted sums (a sample of w = 0 takes no part in it); the factor mean(w) scales the term, so a
    batch of pseudo rows alone weighs exactly W times its plain loss. All w = 1 gives soft_dice_loss; all w = 0, 0."""
    probs = torch.sigmoid(logits.float()).flatten(1)  # (B, pixels)
    target, mean = target.float().flatten(1), weight.float().mean()
    w = weight.float() / torch.clamp(weight.float().max(), min=1e-12)
    intersection = (w * (probs * target).sum(1)).sum()
    ratio = (2.0 * intersection + smooth) / ((w * probs.sum(1)).sum() + (w * target.sum(1)).sum() + smooth)
    return mean * (1.0 - ratio)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits with per-sample weights w (B,): sum_i w_i sum(bce_i) / (B * pixels per sample), so each
    sample counts w_i / B of the batch (all w = 1: the plain mean; all w = W: W times it; all w = 0: 0)."""
    per_sample = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1)
    return (weight.float() * per_sample.sum(1)).sum() / per_sample.numel()


class DiceBCELoss(torch.nn.Module):
    """loss = dice_weight * soft_dice_loss + bce_weight * mean BCE-with-logits; with per-sample ``weight`` (B,)
    their weighted forms (weighted_dice_loss, weighted_bce)."""

    def __init__(self, dice_weight: float = 0.7, bce_weight: float = 0.3, smooth: float = SMOOTH) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is not None:
            return (self.dice_weight * weighted_dice_loss(logits, target, weight, self.smooth)
                    + self.bce_weight * weighted_bce(logits, target, weight))
        dice = soft_dice_loss(logits, target, self.smooth)
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        return self.dice_weight * dice + self.bce_weight * bce


class GlobalDiceBCELoss(DiceBCELoss):
    """DiceBCELoss over the global batch of every rank, in its weighted form: the real samples' count, weight sum
    and max weight (``reduce_max``), and the sums of v p t, v p, v t (v = w / max w) and w bce go through the
    reductions over ranks (``reduce``: an autograd-aware sum), so the loss is what one process computes on the
    global batch: dice_weight * mean(w) * (1 - Dice ratio) + bce_weight * sum(w bce) / (n_real * pixels); every
    rank returns the same value. Samples with ``real`` False (a lighter rank's padding) count nowhere, while a real
    sample of weight 0 still counts in n_real. With DDP averaging the ranks' gradients, a step's gradient equals one
    process's at the global batch."""

    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor],
                 reduce_max: Callable[[torch.Tensor], torch.Tensor], dice_weight: float = 0.7,
                 bce_weight: float = 0.3, smooth: float = SMOOTH) -> None:
        super().__init__(dice_weight, bce_weight, smooth)
        self.reduce = reduce
        self.reduce_max = reduce_max

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                real: torch.Tensor | None = None) -> torch.Tensor:
        probs = torch.sigmoid(logits.float()).flatten(1)  # (B, pixels)
        target = target.float().flatten(1)
        ones = torch.ones(len(probs), device=probs.device)
        real = ones if real is None else real.float()
        w = real * (ones if weight is None else weight.float())  # padding weighs 0 everywhere below
        top = self.reduce_max(w.max() if len(w) else w.new_zeros(()))  # weights >= 0: the real samples' max
        v = w / torch.clamp(top, min=1e-12)
        bce = F.binary_cross_entropy_with_logits(logits.float().flatten(1), target, reduction="none").sum(1)
        sums = torch.stack([(v * (probs * target).sum(1)).sum(), (v * probs.sum(1)).sum(), (v * target.sum(1)).sum(),
                            (w * bce).sum(), real.sum(), w.sum()])
        inter, pred, truth, bce_sum, n_real, w_sum = self.reduce(sums).unbind()
        n_real = torch.clamp(n_real, min=1.0)
        dice = w_sum / n_real * (1.0 - (2.0 * inter + self.smooth) / (pred + truth + self.smooth))
        return self.dice_weight * dice + self.bce_weight * bce_sum / (n_real * probs.shape[1])

    def local(self) -> DiceBCELoss:
        """The same loss on this rank's samples alone (rank 0's validation: no collective)."""
        return DiceBCELoss(self.dice_weight, self.bce_weight, self.smooth)


UGS_HEAD_WEIGHT = 0.5  # UGS-Net's weight_seg2: each auxiliary head's BCE counts half the main loss (weight_seg1 1)


class UGSLoss(torch.nn.Module):
    """UGS-Net's loss on logits (B, 3, ...) = (consensus, intersection, union) against targets of the same order:
    ``main``(consensus) + head_weight * (BCE(intersection) + BCE(union))."""

    def __init__(self, main: DiceBCELoss, head_weight: float = UGS_HEAD_WEIGHT) -> None:
        super().__init__()
        self.main = main  # also the validation loss: the consensus head against the consensus mask
        self.head_weight = head_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        heads = F.binary_cross_entropy_with_logits(logits[:, 1:3].float(), target[:, 1:3].float(), reduction="none")
        per_head = heads.transpose(0, 1).reshape(2, -1).mean(1)  # mean BCE of the intersection and the union head
        return self.main(logits[:, :1], target[:, :1]) + self.head_weight * per_head.sum()


def consensus_loss(loss_fn: torch.nn.Module) -> torch.nn.Module:
    """The loss of the consensus channel alone (validation): ``loss_fn`` itself, a UGSLoss's main loss, or a
    GlobalDiceBCELoss's local form (validation runs on rank 0 alone)."""
    if isinstance(loss_fn, GlobalDiceBCELoss):
        return loss_fn.local()
    return loss_fn.main if isinstance(loss_fn, UGSLoss) else loss_fn
