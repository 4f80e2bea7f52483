"""Checkpoint files (best.pt, last.pt): crash-safe saving (temp file + os.replace), checked reading, and
``load_run`` for evaluate/predict (the run folder's other files, config.json included, belong to runfolder.py).

Checkpoints hold only tensors and plain values and are read with ``torch.load(weights_only=True)``: a file that
holds any other pickled object is refused unread, so a doctored best.pt/last.pt cannot run code.
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctmodel.config import ModelConfig
from ctmodel.nets import build_model
from ctmodel.runfolder import CHECKPOINT_FILES, read_config
from ctprep.atomic import replacing
from ctprep.errors import RunError
from ctprep.store import StoreLayout

CHECKPOINT_FORMAT = "ctstack-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINTS = tuple(CHECKPOINT_FILES)  # ("best", "last")


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
    """The plain module under torch.compile and DistributedDataParallel wrappers (state-dict keys without
    ``_orig_mod.`` or ``module.``): a checkpoint of a distributed run loads on any number of processes."""
    from torch.nn.parallel import DistributedDataParallel

    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


PLAIN_TYPES = (torch.Tensor, str, int, float, bool, type(None))  # what weights_only=True loads, besides containers


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError (a bug, not a user error) unless ``obj`` is tensors and plain values in dicts/lists/tuples."""
    if isinstance(obj, (dict, OrderedDict)):
        for key, value in obj.items():
            check_plain(key, where)
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where}: {type(obj).__name__} would not load with weights_only=True; "
                        "store tensors, numbers, strings, lists or dicts")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file next to ``path``, then os.replace: a crash never leaves half a checkpoint.

    Raises:
        TypeError: ``obj`` holds something other than tensors and plain values (``read_checkpoint`` would refuse it).
    """
    check_plain(obj)
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def checkpoint_payload(model: nn.Module, model_cfg: ModelConfig, layout: StoreLayout, epoch: int,
                       state: dict) -> dict:
    """Everything a checkpoint holds: weights, architecture, store layout, epoch and the training ``state``."""
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": epoch,
            "model": unwrap(model).state_dict(), "model_config": asdict(model_cfg),
            "layout": layout.to_attrs(), **state}


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint file with ``weights_only=True`` (never runs code from the file).

    Raises:
        RunError: missing, damaged, holding pickled objects, foreign or from a newer ctstack (one line).
    """
    if not path.exists():
        raise RunError(f"{path}: checkpoint not found; train first with `ctmodel train` or pass --checkpoint last")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise unsafe_or_unreadable(path, err) from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise RunError(f"{path}: unreadable checkpoint ({type(err).__name__}); use the other checkpoint "
                       "(best/last) or retrain") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a ctstack checkpoint; expected a file written by `ctmodel train`")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise RunError(f"{path}: checkpoint format {version!r}, this ctstack reads up to {CHECKPOINT_VERSION}; "
                       "upgrade ctstack to use this run")
    return payload


def unsafe_or_unreadable(path: Path, err: pickle.UnpicklingError) -> RunError:
    """The one-line error for a file that ``torch.load(weights_only=True)`` refused: a pickled object, or damage."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found is None:
        return RunError(f"{path}: unreadable checkpoint (damaged pickle); use the other checkpoint (best/last) "
                        "or retrain")
    return RunError(f"{path}: refused unread: expected only tensors and plain values, found a pickled Python "
                    f"object ({found.group(1)}) that could run code when loaded; use a checkpoint from a source "
                    "you trust, or retrain")


def load_run(run_dir: Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``best.pt`` or ``last.pt`` of a run folder as an eval-mode model on ``device``.

    Raises:
        RunError: the folder, config.json or checkpoint is missing or damaged (one line).
    """
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint {which!r}: expected one of {', '.join(CHECKPOINTS)}")
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = run_dir / CHECKPOINT_FILES[which]
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
