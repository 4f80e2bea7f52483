"""metrics.csv (one row per epoch, appended) and curves.png (loss, Dice, IoU per epoch: the study's Figure 5.1)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from ctprep.atomic import replacing, write_text


METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice_3d", "val_dice_slice", "val_iou_slice",
                  "lr", "seconds", "samples_per_s", "peak_mem_mb")


def append_metrics(path: Path, row: dict) -> None:
    """Append one epoch's row (header written first when the file is new): METRIC_COLUMNS, then any extra keys of
    ``row`` in its order (e.g. the mean teacher's consistency_loss, unlabeled_lesion_slices)."""
    new = not path.exists()
    columns = [*METRIC_COLUMNS, *(k for k in row if k not in METRIC_COLUMNS)]
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row[k]) for k in columns})
        f.flush()


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) and not math.isnan(value) else value


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv as a DataFrame (empty with the columns when the file does not exist)."""
    if not path.exists():
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    return pd.read_csv(path)


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop rows after ``last_epoch`` (a resumed run re-does the epochs its checkpoint does not hold)."""
    if path.exists():
        rows = read_metrics(path)
        kept = rows[rows["epoch"] <= last_epoch]
        if len(kept):
            write_text(path, kept.to_csv(index=False))
        else:
            path.unlink()


def plot_curves(metrics: pd.DataFrame, out: Path) -> Path:
    """Draw loss (train, val), Dice (3-D, slice) and IoU (slice) per epoch into ``out`` (PNG).

    The figure has its own Agg canvas: matplotlib's global backend (pyplot's) is neither chosen nor changed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_dice, ax_iou = fig.subplots(1, 3)
    epochs = metrics["epoch"]
    ax_loss.plot(epochs, metrics["train_loss"], "o-", label="train")
    ax_loss.plot(epochs, metrics["val_loss"], "s-", label="val")
    ax_dice.plot(epochs, metrics["val_dice_3d"], "o-", label="val 3-D (per case)")
    ax_dice.plot(epochs, metrics["val_dice_slice"], "s-", label="val slice-level")
    ax_iou.plot(epochs, metrics["val_iou_slice"], "o-", label="val slice-level")
    for ax, title in ((ax_loss, "loss (Dice + BCE)"), (ax_dice, "Dice"), (ax_iou, "IoU")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=100)
    return out
