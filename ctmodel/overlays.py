"""Overlay figures like the source study's Figures 5.3/5.4: the three input slices, truth and prediction on the centre."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctmodel.inference import stack_indices
from ctprep.atomic import replacing

if TYPE_CHECKING:
    from ctmodel.evaluate import CaseResult
    from ctprep.store import SliceStore

TRUTH_RGBA = (0.1, 0.85, 0.2, 0.45)  # green
PRED_RGBA = (0.95, 0.15, 0.1, 0.45)  # red


def pick_cases(results: list["CaseResult"]) -> dict[str, "CaseResult"]:
    """The best, median and worst cases by 3-D Dice (ties broken by case id)."""
    ranked = sorted(results, key=lambda r: (-r.metrics.dice, r.case_id))
    if not ranked:
        return {}
    return {"best": ranked[0], "median": ranked[(len(ranked) - 1) // 2], "worst": ranked[-1]}


def _tint(mask: np.ndarray, rgba: tuple[float, float, float, float]) -> np.ndarray:
    """(S, S) bool -> (S, S, 4) RGBA layer, transparent outside the mask."""
    layer = np.zeros((*mask.shape, 4), dtype=np.float32)
    layer[mask] = rgba
    return layer


def overlay_figure(stack: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str, slice_index: int):
    """A matplotlib Figure: z-1, z, z+1 inputs, then truth (green) and prediction (red) over slice z."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.6), dpi=100)
    axes = figure.subplots(1, 5)
    names = ["input z-1", f"input z = {slice_index}", "input z+1", "truth", "prediction"]
    for ax, image, name in zip(axes, [stack[0], stack[1], stack[2], stack[1], stack[1]], names):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    axes[3].imshow(_tint(truth, TRUTH_RGBA))
    axes[4].imshow(_tint(truth, TRUTH_RGBA))
    axes[4].imshow(_tint(pred, PRED_RGBA))
    figure.suptitle(title, fontsize=10)
    return figure


def write_overlay(store: "SliceStore", result: "CaseResult", path: Path, title: str) -> Path:
    """Write one case's overlay PNG (temp file + rename)."""
    import torch

    n_slices = int(result.metrics.slices.n_slices)
    indices = stack_indices(torch.tensor([result.figure_slice]), n_slices)[0].numpy()  # edge slices repeat
    window = store.read_image(result.case_id, slice(int(indices.min()), int(indices.max()) + 1))
    stack = window[indices - indices.min()]  # (3, S, S)
    truth = store.read_mask(result.case_id, np.array([result.figure_slice]))[0].astype(bool)
    figure = overlay_figure(stack, truth, result.figure_pred, title, result.figure_slice)
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return path
