"""Inference on whole volumes: 2.5D stacks (z-1, z, z+1) with edge repeat, batched; for unet3d a Gaussian-weighted
sliding window of 3-D patches; sigmoid probabilities."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ctmodel.device import autocast
from ctmodel.heads import main_logits

OVERLAP = 0.5  # sliding window: share of a window that the next one overlaps (step = window * (1 - overlap))
SIGMA_SCALE = 1 / 8  # Gaussian importance weights: sigma = window / 8 per axis, as nnU-Net


def stack_indices(slice_index: torch.Tensor, n_slices: int | torch.Tensor) -> torch.Tensor:
    """(B,) centre slice indices -> (B, 3) indices z-1, z, z+1, clamped so the ends repeat the edge slice."""
    offsets = torch.tensor([-1, 0, 1], device=slice_index.device)
    upper = torch.as_tensor(n_slices, device=slice_index.device) - 1
    if upper.ndim:  # one slice count per sample: (B,) -> (B, 1)
        upper = upper[:, None]
    return torch.minimum(torch.clamp(slice_index[:, None] + offsets, min=0), upper)


def stack_volume(volume: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(Z, S, S) volume and (B,) centres -> (B, 3, S, S) stacks."""
    return volume[stack_indices(centres, volume.shape[0])]


def is_volumetric(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the module under its torch.compile wrapper) takes 3-D patches (nets.UNet3d)."""
    return bool(getattr(getattr(model, "_orig_mod", model), "volumetric", False))


def window_starts(length: int, window: int, overlap: float = OVERLAP) -> list[int]:
    """Start offsets of windows covering ``length`` voxels: the fewest whose steps are at most
    max(1, floor(window * (1 - overlap))), spread evenly from 0 to length - window (as nnU-Net's
    compute_steps_for_sliding_window); [0] when one window covers it."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / max(1, math.floor(window * (1 - overlap)))) + 1
    return [round(i * (length - window) / (n - 1)) for i in range(n)]


def gaussian_weights(window: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Importance map of one window: a separable Gaussian, sigma = window / 8 per axis, centred, maximum 1."""
    axes = []
    for n in window:
        offset = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (offset / (n * SIGMA_SCALE)) ** 2))
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights[..., None] * axis
    return (weights / weights.max()).float()


def volume_window(model: torch.nn.Module, volume: torch.Tensor) -> tuple[int, int, int]:
    """unet3d's window (patch_depth, patch_size, patch_size), the in-plane side clipped to the volume's."""
    depth, size, _ = getattr(model, "_orig_mod", model).window
    return depth, min(size, volume.shape[1]), min(size, volume.shape[2])


@torch.no_grad()
def sliding_window_logits(model: torch.nn.Module, volume: torch.Tensor, window: tuple[int, int, int],
                          batch_size: int = 1, precision: str = "fp32", overlap: float = OVERLAP,
                          heads: bool = False) -> torch.Tensor:
    """Logits (Z, H, W) float32 of a 3-D network over a (Z, H, W) volume: windows of ``window`` voxels (the volume
    zero-padded, i.e. with air, up to it), ``batch_size`` windows per forward pass, combined as the Gaussian-weighted
    average of the windows' logits. With ``heads``, every output channel: (C, Z, H, W)."""
    sizes = volume.shape
    pads = [max(0, w - n) for w, n in zip(window, sizes)]
    padded = F.pad(volume, [p for pad in reversed(pads) for p in (0, pad)]) if any(pads) else volume
    weights = gaussian_weights(window, volume.device)
    total, norm = None, torch.zeros(padded.shape, dtype=torch.float32, device=volume.device)
    corners = list(itertools.product(*(window_starts(n, w, overlap) for n, w in zip(padded.shape, window))))
    for first in range(0, len(corners), batch_size):
        boxes = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in corners[first:first + batch_size]]
        patches = torch.stack([padded[box] for box in boxes])[:, None]  # (b, 1, D, P, P)
        with autocast(volume.device, precision):
            logits = (model(patches) if heads else main_logits(model(patches))).float()  # (b, C, D, P, P)
        if total is None:
            total = torch.zeros((logits.shape[1], *padded.shape), dtype=torch.float32, device=volume.device)
        for box, patch_logits in zip(boxes, logits):
            total[(slice(None), *box)] += patch_logits * weights
            norm[box] += weights
    averaged = (total / norm)[:, : sizes[0], : sizes[1], : sizes[2]]
    return averaged if heads else averaged[0]


@torch.no_grad()
def batched_logits(model: torch.nn.Module, volume: torch.Tensor, batch_size: int, precision: str,
                   heads: bool = False):
    """Yield (centres, logits (B, 1, S, S) float32) over a (Z, S, S) volume in slice order: the consensus head, or
    with ``heads`` every output channel (B, C, S, S).

    On CUDA every forward pass holds ``batch_size`` stacks (the last one padded by repeating its final centre,
    whose extra logits are dropped), so cudnn autotunes one input shape instead of one per volume length.
    A 3-D network (``is_volumetric``) yields once: every slice, from ``sliding_window_logits`` with
    ``batch_size // patch_depth`` windows (at least 1) per pass, so ``batch_size`` counts slices for every model.
    """
    if is_volumetric(model):
        window = volume_window(model, volume)
        logits = sliding_window_logits(model, volume, window, max(1, batch_size // window[0]), precision, heads=True)
        yield torch.arange(volume.shape[0], device=volume.device), (logits if heads else logits[:1]).transpose(0, 1)
        return
    n_slices = volume.shape[0]
    for start in range(0, n_slices, batch_size):
        centres = torch.arange(start, min(start + batch_size, n_slices), device=volume.device)
        padded = centres
        if volume.device.type == "cuda" and len(centres) < batch_size:
            padded = torch.cat([centres, centres[-1:].expand(batch_size - len(centres))])
        with autocast(volume.device, precision):
            logits = model(stack_volume(volume, padded))
        yield centres, (logits if heads else main_logits(logits))[: len(centres)].float()


@torch.no_grad()
def predict_volume(model: torch.nn.Module, volume: torch.Tensor, batch_size: int = 32,
                   precision: str = "bf16") -> torch.Tensor:
    """Probabilities (Z, S, S) float32 for a (Z, S, S) [0, 1] volume already on the model's device."""
    return _probabilities(model, volume, batch_size, precision, heads=False)[0]


@torch.no_grad()
def predict_heads(model: torch.nn.Module, volume: torch.Tensor, batch_size: int = 32,
                  precision: str = "bf16") -> torch.Tensor:
    """Probabilities (C, Z, S, S) float32 of every output head (a UGS model: consensus, intersection, union)."""
    return _probabilities(model, volume, batch_size, precision, heads=True)


def _probabilities(model: torch.nn.Module, volume: torch.Tensor, batch_size: int, precision: str,
                   heads: bool) -> torch.Tensor:
    """(C, Z, S, S) sigmoid probabilities in eval mode (C = 1 unless ``heads``); the model's mode is restored."""
    was_training = model.training
    model.eval()
    probs = None
    for centres, logits in batched_logits(model, volume, batch_size, precision, heads=heads):
        if probs is None:
            probs = torch.empty((logits.shape[1], *volume.shape), dtype=torch.float32, device=volume.device)
        probs[:, centres] = torch.sigmoid(logits).transpose(0, 1)
    model.train(was_training)
    return probs if probs is not None else torch.empty((1, *volume.shape), device=volume.device)  # no slices
