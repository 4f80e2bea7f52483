"""The device policy, decided once: which device, autocast context, memory format."""
from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, ContextManager

import torch

from ctprep.errors import UsageError

if TYPE_CHECKING:
    from ctmodel.config import ModelConfig


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device {name}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast on CUDA when precision is 'bf16'; fp32 (no autocast) otherwise and on CPU."""
    if precision not in ("bf16", "fp32"):
        raise UsageError(f"--precision {precision}: expected bf16 or fp32")
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


GPU_INFERENCE_BATCH = 32  # slices per forward pass on CUDA
CPU_INFERENCE_BATCH = 4  # on the CPU larger batches spill the caches: 32 is ~2x slower per slice than 4 (measured)


def inference_batch(device: torch.device, requested: int | None = None) -> int:
    """Slices per forward pass when predicting whole volumes: ``requested``, else the device's measured best."""
    if requested is not None:
        return requested
    return GPU_INFERENCE_BATCH if device.type == "cuda" else CPU_INFERENCE_BATCH


def memory_format(model_cfg: ModelConfig) -> torch.memory_format:
    """--channels-last's layout: channels_last for the 2.5D networks, channels_last_3d for unet3d."""
    return torch.channels_last_3d if model_cfg.volumetric else torch.channels_last
