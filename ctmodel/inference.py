"""2.5D inference on whole volumes: stacks (z-1, z, z+1) with edge repeat, batched, sigmoid probabilities."""
from __future__ import annotations

import torch

from ctmodel.device import autocast


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


@torch.no_grad()
def batched_logits(model: torch.nn.Module, volume: torch.Tensor, batch_size: int, precision: str):
    """Yield (centres, logits (B, 1, S, S) float32) over a (Z, S, S) volume in slice order.

    On CUDA every forward pass holds ``batch_size`` stacks (the last one padded by repeating its final centre,
    whose extra logits are dropped), so cudnn autotunes one input shape instead of one per volume length.
    """
    n_slices = volume.shape[0]
    for start in range(0, n_slices, batch_size):
        centres = torch.arange(start, min(start + batch_size, n_slices), device=volume.device)
        padded = centres
        if volume.device.type == "cuda" and len(centres) < batch_size:
            padded = torch.cat([centres, centres[-1:].expand(batch_size - len(centres))])
        with autocast(volume.device, precision):
            logits = model(stack_volume(volume, padded))
        yield centres, logits[: len(centres)].float()


@torch.no_grad()
def predict_volume(model: torch.nn.Module, volume: torch.Tensor, batch_size: int = 32,
                   precision: str = "bf16") -> torch.Tensor:
    """Probabilities (Z, S, S) float32 for a (Z, S, S) [0, 1] volume already on the model's device."""
    was_training = model.training
    model.eval()
    probs = torch.empty(volume.shape, dtype=torch.float32, device=volume.device)
    for centres, logits in batched_logits(model, volume, batch_size, precision):
        probs[centres] = torch.sigmoid(logits)[:, 0]
    model.train(was_training)
    return probs
