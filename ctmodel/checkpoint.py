"""Checkpoints and run folders: crash-safe saving (temp file + os.replace) and ``load_run`` for evaluate/predict."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctmodel.config import ModelConfig
from ctmodel.nets import build_model
from ctprep.atomic import replacing
from ctprep.errors import RunError
from ctprep.store import StoreLayout

CHECKPOINT_FORMAT = "ctstack-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS = ("best", "last")


@dataclass
class LoadedRun:
    """A trained model ready for inference, with what it was trained on."""

    model: nn.Module  # eval mode, on the requested device
    model_config: ModelConfig
    layout: StoreLayout  # window, size and dtype of the training store: inputs must match it
    config: dict  # the run's config.json
    path: Path  # the checkpoint file
    epoch: int  # last completed epoch stored in the checkpoint (1-based)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a torch.compile wrapper (state-dict keys without ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file next to ``path``, then os.replace: a crash never leaves half a checkpoint."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def checkpoint_payload(model: nn.Module, model_cfg: ModelConfig, layout: StoreLayout, epoch: int,
                       state: dict) -> dict:
    """Everything a checkpoint holds: weights, architecture, store layout, epoch and the training ``state``."""
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": epoch,
            "model": unwrap(model).state_dict(), "model_config": asdict(model_cfg),
            "layout": layout.to_attrs(), **state}


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint file; RunError (one line) when it is missing or damaged."""
    if not path.exists():
        raise RunError(f"{path}: checkpoint not found; train first with `ctmodel train` or pick --which last")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RunError(f"{path}: unreadable checkpoint ({type(err).__name__}); use the other checkpoint "
                       "(best/last) or retrain") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a ctstack checkpoint; expected a file written by `ctmodel train`")
    return payload


def read_config(run_dir: Path) -> dict:
    """The run's config.json; RunError when the folder or file is missing or not JSON."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no run folder here; pass a folder written by `ctmodel train`")
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunError(f"{path}: missing; this folder is not a ctstack run (or training never started)") from err
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err.msg}); the run folder is damaged") from err


def load_run(run_dir: Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``best.pt`` or ``last.pt`` of a run folder as an eval-mode model on ``device``.

    Raises:
        RunError: the folder, config.json or checkpoint is missing or damaged (one line).
    """
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint {which!r}: expected one of {', '.join(CHECKPOINTS)}")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = run_dir / f"{which}.pt"
    payload = read_checkpoint(path, device)
    model_cfg = ModelConfig.from_dict(payload["model_config"])
    model = build_model(model_cfg)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise RunError(f"{path}: weights do not fit the stored architecture {model_cfg}; retrain") from err
    model.to(device).eval()
    return LoadedRun(model=model, model_config=model_cfg, layout=StoreLayout.from_attrs(payload["layout"]),
                     config=config, path=path, epoch=int(payload["epoch"]))
