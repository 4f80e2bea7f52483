"""Batched augmentation on the device: left-right flip, small rotation and scale (one affine_grid /
grid_sample per batch; masks resampled nearest), and intensity jitter. Off with ``--no-augment``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; each sample draws its own values."""

    flip_p: float = 0.5  # left-right only: an up-down flip puts the spine in front of the sternum
    rotation_deg: float = 10.0  # uniform in [-10, 10] degrees
    scale: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.9, 1.1)  # x -> x * c + b, then clipped to [0, 1]
    brightness: float = 0.05  # b uniform in [-0.05, 0.05]


def uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n,) uniform samples in [low, high) drawn from ``generator``."""
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_affines(n: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 2, 3) affine matrices (output -> input sampling grid) combining flip, rotation and scale."""
    angle = uniform(n, -cfg.rotation_deg, cfg.rotation_deg, generator, device) * (math.pi / 180.0)
    scale = uniform(n, *cfg.scale, generator, device)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < cfg.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    return theta


def augment_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                  cfg: AugmentConfig = AugmentConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images (B, C, S, S) in [0, 1] and masks (B, 1, S, S) {0, 1} with the same geometry per sample.

    Outside the image, intensities are 0 (air in the default window) and masks 0.
    """
    n = x.shape[0]
    theta = random_affines(n, cfg, generator, x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    contrast = uniform(n, *cfg.contrast, generator, x.device)[:, None, None, None]
    brightness = uniform(n, -cfg.brightness, cfg.brightness, generator, x.device)[:, None, None, None]
    return (x * contrast + brightness).clamp_(0.0, 1.0), y
