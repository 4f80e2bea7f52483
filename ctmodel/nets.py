"""The networks: the dual-encoder 2.5D U-Net of the source study, its unet2d baseline and the unet3d of its
comparison, built from a ModelConfig.

The 2.5D networks take x: (B, 3, S, S) = slices (z-1, z, z+1) and return logits (B, 1, S, S); unet3d takes
patches (B, 1, D, H, W) and returns logits (B, 1, D, H, W). Any size works (inputs are padded to a multiple of
2**depth and the output cropped back).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ctmodel.blocks import BLOCK_TYPES, Decoder, Encoder, make_fusion
from ctmodel.config import ModelConfig
from ctmodel.heads import add_ugs_heads


def level_channels(cfg: ModelConfig) -> list[int]:
    """Channels per level: width doubling per level, capped at 8 x width (keeps the bottleneck small)."""
    return [cfg.width * min(2**level, 8) for level in range(cfg.depth + 1)]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad H and W at the bottom/right up to a multiple (and at least 2 multiples, so the deepest level
    keeps 2x2 pixels for InstanceNorm); returns the padded tensor and the original (H, W)."""
    height, width = x.shape[-2:]
    pad_h = max(-height % multiple, 2 * multiple - height)
    pad_w = max(-width % multiple, 2 * multiple - width)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # 0 = windowed air
    return x, (height, width)


def pad_patch(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad D, H and W of (B, C, D, H, W) at the end up to multiples (at least one), and the last axis by one
    more multiple when the deepest level would hold a single voxel (InstanceNorm needs 2); returns the padded
    tensor and the original (D, H, W)."""
    sizes = tuple(x.shape[-3:])
    target = [max(multiple, -(-n // multiple) * multiple) for n in sizes]
    if math.prod(t // multiple for t in target) < 2:
        target[-1] += multiple
    pads = [t - n for t, n in zip(target, sizes)]
    if any(pads):
        x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])  # 0 = windowed air
    return x, sizes


class DualEncoderUNet(nn.Module):
    """Encoder A on the centre slice, encoder B on the 3-slice stack, fused per level (or only at the bottleneck,
    skips then from encoder A), one shared decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        channels, block = level_channels(cfg), BLOCK_TYPES[cfg.block]
        self.multiple = 2**cfg.depth
        self.encoder_a = Encoder(1, channels, block)
        self.encoder_b = Encoder(3, channels, block)
        fused_levels = channels[-1:] if cfg.fusion == "bottleneck" else channels
        self.fusion = nn.ModuleList(make_fusion(cfg.fusion, c) for c in fused_levels)
        self.decoder = Decoder(channels, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, self.multiple)  # (B, 3, H', W')
        feats_a = self.encoder_a(x[:, 1:2])  # centre slice (B, 1, H', W')
        feats_b = self.encoder_b(x)  # stack (B, 3, H', W')
        skips = feats_a[:len(feats_a) - len(self.fusion)]  # encoder A's levels that no fusion covers (bottleneck)
        fused = [fuse(a, b) for fuse, a, b in zip(self.fusion, feats_a[len(skips):], feats_b[len(skips):])]
        return self.decoder([*skips, *fused])[..., :height, :width]  # (B, 1, H, W)


class UNet2d(nn.Module):
    """The baseline: the same blocks (cfg.block), one encoder, on the centre slice (or the stack with context=3)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        channels = level_channels(cfg)
        self.multiple = 2**cfg.depth
        self.context = cfg.context
        block = BLOCK_TYPES[cfg.block]
        self.encoder = Encoder(cfg.context, channels, block)
        self.decoder = Decoder(channels, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, self.multiple)
        inputs = x if self.context == 3 else x[:, 1:2]  # (B, context, H', W')
        return self.decoder(self.encoder(inputs))[..., :height, :width]


class UNet3d(nn.Module):
    """The 3-D U-Net of the study's comparison: the same levels and blocks (cfg.block) made 3-D, on (B, 1, D, H, W)
    patches. ``volumetric`` tells inference to slide ``window`` over whole volumes (ctmodel.inference)."""

    volumetric = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        channels = level_channels(cfg)
        self.multiple = 2**cfg.depth
        self.window = (cfg.patch_depth, cfg.patch_size, cfg.patch_size)  # in-plane clipped to the store size
        block = BLOCK_TYPES[cfg.block]
        self.encoder = Encoder(1, channels, block, dims=3)
        self.decoder = Decoder(channels, block, dims=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (depth, height, width) = pad_patch(x, self.multiple)  # (B, 1, D', H', W')
        return self.decoder(self.encoder(x))[..., :depth, :height, :width]  # (B, 1, D, H, W)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network named by ``cfg.name``, freshly initialised; with ``cfg.heads == "ugs"`` it returns three logit
    channels (consensus, intersection, union; ctmodel.heads) instead of one."""
    if cfg.name == "dual-encoder":
        model: nn.Module = DualEncoderUNet(cfg)
    elif cfg.name == "unet3d":
        model = UNet3d(cfg)
    else:
        model = UNet2d(cfg)
    return add_ugs_heads(model) if cfg.heads == "ugs" else model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
