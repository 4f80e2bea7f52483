"""Overlay figures of evaluated cases: the slice, truth and prediction as contours, and a zoom on the lesion."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctmodel.metrics import dice
from ctprep.atomic import replacing

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ctmodel.evaluate import CaseScore
    from ctprep.store import SliceStore

TRUTH_STYLE = {"colors": "#2ca02c", "linewidths": 2.0, "linestyles": "solid"}  # green, solid
PRED_STYLE = {"colors": "#e81ce8", "linewidths": 2.0, "linestyles": "dashed"}  # magenta, dashed: reads over green
MIN_PANEL_PX = 256  # each panel at least this many pixels wide, and never below the stored slice size
ZOOM_MARGIN = 0.5  # the zoom shows the lesion box plus this fraction of its side on every edge
LAYOUT_PAD_PX = 8  # room the constrained layout leaves around each panel
MIN_ZOOM_PX = 16  # smallest zoom window side, in stored pixels


def pick_cases(results: list["CaseScore"]) -> list[tuple[tuple[str, ...], "CaseScore"]]:
    """The best, median and worst cases by 3-D Dice (ties by case id), once each with every label it earns.

    With fewer than three cases the labels share a case: two cases give ``(("best", "median"), a), (("worst",), b)``,
    one gives ``(("best", "median", "worst"), a)``, none gives ``[]``.
    """
    ranked = sorted(results, key=lambda r: (-r.metrics.dice, r.case_id))
    if not ranked:
        return []
    picked: dict[str, tuple[list[str], "CaseScore"]] = {}
    for label, result in (("best", ranked[0]), ("median", ranked[(len(ranked) - 1) // 2]), ("worst", ranked[-1])):
        picked.setdefault(result.case_id, ([], result))[0].append(label)
    return [(tuple(labels), result) for labels, result in picked.values()]


def zoom_box(mask: np.ndarray, margin: float = ZOOM_MARGIN, min_side: int = MIN_ZOOM_PX) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end-exclusive: a square around ``mask``'s bounding box, inside the image.

    The whole image when ``mask`` is empty.
    """
    height, width = mask.shape
    if not mask.any():
        return 0, height, 0, width
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    side = min(max(int(np.ceil(side * (1 + 2 * margin))), min_side), height, width)
    centre_r, centre_c = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    r0 = int(np.clip(round(centre_r - side / 2), 0, height - side))
    c0 = int(np.clip(round(centre_c - side / 2), 0, width - side))
    return r0, r0 + side, c0, c0 + side


def _draw_contours(ax: "Axes", truth: np.ndarray, pred: np.ndarray) -> None:
    """Truth and prediction outlines at the pixel edges (level 0.5 of each mask); nothing for an empty mask."""
    for mask, style in ((truth, TRUTH_STYLE), (pred, PRED_STYLE)):
        if mask.any():
            ax.contour(mask.astype(np.float32), levels=[0.5], **style)


def _legend_handles(truth: np.ndarray, pred: np.ndarray) -> list:
    """Legend entries for truth and prediction, with their pixel counts on this slice."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=style["colors"], linewidth=style["linewidths"], linestyle=style["linestyles"],
                   label=f"{name} ({int(mask.sum()):,} px)" if mask.any() else f"{name} (none on this slice)")
            for name, mask, style in (("truth", truth, TRUTH_STYLE), ("prediction", pred, PRED_STYLE))]


def overlay_figure(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str) -> "Figure":
    """A Figure of three square panels: the slice, truth (green) and prediction (magenta dashed), a truth zoom."""
    from matplotlib.figure import Figure

    panel_px = max(MIN_PANEL_PX, image.shape[1])
    dpi = 100
    width_px, height_px = 3 * panel_px + 4 * LAYOUT_PAD_PX, panel_px + 2 * LAYOUT_PAD_PX + 90  # + titles, legend
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    axes = figure.subplots(1, 3)
    r0, r1, c0, c1 = zoom_box(truth if truth.any() else pred)  # the lesion; a far false positive shows left
    panels = [("input slice", None), ("truth and prediction", None),
              (f"zoom: rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}", (r0, r1, c0, c1))]
    for ax, (name, box) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if ax is not axes[0]:
            _draw_contours(ax, truth, pred)
        if box is not None:
            ax.set_xlim(box[2] - 0.5, box[3] - 0.5)
            ax.set_ylim(box[1] - 0.5, box[0] - 0.5)  # rows grow downwards, as in the other panels
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.legend(handles=_legend_handles(truth, pred), loc="outside lower center", ncols=2, fontsize=10,
                  frameon=False)
    figure.suptitle(title, fontsize=11)
    return figure


def overlay_title(labels: tuple[str, ...], result: "CaseScore", truth: np.ndarray) -> str:
    """Two lines: 'best = median: case p03' and 'slice 41 of 120 (0 = most inferior) | Dice 3-D 0.874, slice 0.912'."""
    n_slices = int(result.metrics.slices.n_slices)
    slice_dice = dice(result.figure_pred, truth)
    return (f"{' = '.join(labels)}: case {result.case_id}\n"
            f"slice {result.figure_slice} of {n_slices} (0 = most inferior)  |  "
            f"Dice 3-D {result.metrics.dice:.3f}, this slice {slice_dice:.3f}")


def write_overlay(store: "SliceStore", result: "CaseScore", path: Path, labels: tuple[str, ...]) -> Path:
    """Write one case's overlay PNG (temp file + rename)."""
    z = np.array([result.figure_slice])
    image = store.read_image(result.case_id, z)[0]
    truth = store.read_mask(result.case_id, z)[0].astype(bool)
    figure = overlay_figure(image, truth, np.asarray(result.figure_pred, dtype=bool),
                            overlay_title(labels, result, truth))
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_overlays(store: "SliceStore", results: list["CaseScore"], out_dir: Path) -> list[Path]:
    """One PNG per distinct best / median / worst case, named by its labels: ``best-median-p03.png``."""
    return [write_overlay(store, result, Path(out_dir) / f"{'-'.join(labels)}-{result.case_id}.png", labels)
            for labels, result in pick_cases(results)]
