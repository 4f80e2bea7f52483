"""UGS-Net's output heads: beside the consensus logit, 1x1 convs predicting the raters' intersection
("high-confidence") and union ("low-confidence") masks from the decoder's last features.

After Yang, Shen, Zhang and Wang, "Uncertainty-Guided Lung Nodule Segmentation with Feature-Aware Attention",
MICCAI 2022 (github.com/yanghan-yh/UGS-Net). Only the multi-target heads and the loss weighting are borrowed
(docs/raters.md, "Training targets"); the backbone stays the run's model, so every model takes these heads.
"""
from __future__ import annotations

import torch
from torch import nn

UGS_CHANNELS = ("consensus", "intersection", "union")  # output channel order of a UGS model (and of its targets)


class UGSHead(nn.Module):
    """The decoder's original 1x1 consensus head plus one 1x1 conv with two channels (intersection, union)."""

    def __init__(self, main: nn.Module) -> None:
        super().__init__()
        self.main = main  # keeps its (seeded) initialisation: the consensus head of a plain model
        conv = type(main)
        self.bands = conv(main.in_channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x), self.bands(x)], dim=1)  # (B, 3, [D,] H, W) consensus, intersection, union


def add_ugs_heads(model: nn.Module) -> nn.Module:
    """Replace ``model.decoder.head`` (every ctstack network has one) by a UGSHead; returns the model."""
    model.decoder.head = UGSHead(model.decoder.head)
    return model


def main_logits(logits: torch.Tensor) -> torch.Tensor:
    """The consensus channel (B, 1, ...) of any model's logits: channel 0 of a UGS model's three."""
    return logits[:, :1]


def band(probs: torch.Tensor) -> torch.Tensor:
    """The uncertainty band of UGS probabilities (3, ...): p_union - p_intersection clipped to [0, 1]."""
    return (probs[2] - probs[1]).clamp_(0.0, 1.0)
