"""Imbalance statistics from the index alone: empty vs lesion slices per patient and overall."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ctprep.atomic import replacing, write_text
from ctprep.console import ratio_text
from ctprep.errors import UsageError
from ctprep.index import lost_slices, rater_disagreement, read_index
from ctprep.location import open_location
from ctprep.outputs import check_output, check_outputs
from ctprep.splits import check_split_choice
from ctsample.plan import classify, kind_counts, labeled_rows

STAT_COLUMNS = ("case_id", "split", "slices", "lesion", "empty", "ratio", "pct_empty", "neighbour_empty",
                "source_lesion_voxels", "lost_slices", "lost_voxels", "n_raters", "disagree_slices")


@dataclass(frozen=True)
class StoreStats:
    """What `ctsample stats` prints: the per-patient table and the split's unlabeled patients."""

    table: pd.DataFrame  # STAT_COLUMNS, one row per labeled patient
    unlabeled: int
    neighbours: int = 1  # the k of the table's neighbour_empty column
    pseudo: int = 0  # of the unlabeled patients, those holding a pseudo-label (planned with `plan --pseudo`)

    def overall_rows(self) -> list[tuple[str, object]]:
        """The headline rows (see ``overall_rows``)."""
        return overall_rows(self.table, self.unlabeled, self.pseudo)

    def patient_headers(self) -> list[str]:
        """The columns of ``patient_rows``, as `ctsample stats` prints them."""
        headers = ["case", "split", "slices", "lesion", "empty", "empty:lesion", "% empty",
                   f"neighbours (k={self.neighbours})"]
        return headers + ["raters", "raters disagree"] if self.several_raters else headers

    @property
    def several_raters(self) -> bool:
        """Whether any patient has two or more raters (one-rater stores print today's table)."""
        return bool((self.table["n_raters"] >= 2).any())

    def patient_rows(self) -> list[tuple]:
        """One printed row per labeled patient: the ratio to 2 decimals ('-' without lesion slices), % empty to 1."""
        rows = [(r.case_id, r.split, r.slices, r.lesion, r.empty, ratio_text(r.ratio, "-", 2), f"{r.pct_empty:.1f}",
                 r.neighbour_empty) for r in self.table.itertuples()]
        if not self.several_raters:
            return rows
        return [(*row, r.n_raters, r.disagree_slices) for row, r in zip(rows, self.table.itertuples())]


def store_stats(store_path: Path, split: str = "all", neighbours: int = 1, plot: Path | None = None,
                csv: Path | None = None) -> StoreStats:
    """Per-patient statistics of the store's ``split``; writes the plot (PNG) and the table (CSV) when given.

    Both outputs are checked before either is written: never a store's own files, never a folder.
    """
    check_split_choice(split)
    if neighbours < 0:
        raise UsageError(f"--neighbours {neighbours}: expected 0 or more slices")
    check_outputs(plot, csv)
    index = read_index(store_path)
    table = patient_stats(index, split, neighbours)
    if plot is not None:
        plot_stats(table, plot, f"{open_location(store_path).name}: {split} split, {len(table)} labeled patients")
    if csv is not None:
        save_stats_csv(table, csv)
    return StoreStats(table, unlabeled_patients(index, split), neighbours, pseudo_patients(index, split))


def patient_stats(index: pd.DataFrame, split: str = "all", neighbours: int = 1) -> pd.DataFrame:
    """Per labeled patient of ``split``: slices, lesion, empty, empty:lesion, % empty, empties within k of a lesion,
    source lesion voxels, the slices and source lesion voxels lost to resizing (see ``lost_to_resize``), the
    case's raters and its slices where they disagree on lesion presence (``ctprep.index.rater_disagreement``)."""
    rows = labeled_rows(index, split)
    slices = classify(rows, neighbours)
    per_kind = kind_counts(slices)
    lesion = per_kind[0].to_numpy()
    empty = per_kind[1].to_numpy() + per_kind[2].to_numpy()
    first = slices.groupby("case")[["case_id", "split"]].first()
    voxels = rows["source_lesion_voxels"].to_numpy(np.int64)
    lost = lost_slices(rows).to_numpy(bool)
    per_case = partial(np.bincount, slices["case"].to_numpy(), minlength=len(first))
    return pd.DataFrame({
        "case_id": first["case_id"].to_numpy(), "split": first["split"].to_numpy(),
        "slices": lesion + empty, "lesion": lesion, "empty": empty,
        "ratio": np.where(lesion > 0, empty / np.maximum(lesion, 1), np.nan),
        "pct_empty": 100.0 * empty / (lesion + empty), "neighbour_empty": per_kind[1].to_numpy(),
        "source_lesion_voxels": per_case(weights=voxels).astype(np.int64),
        "lost_slices": per_case(weights=lost).astype(np.int64),
        "lost_voxels": per_case(weights=np.where(lost, voxels, 0)).astype(np.int64),
        "n_raters": rows.groupby(slices["case"].to_numpy())["n_raters"].first().to_numpy(np.int64),
        "disagree_slices": per_case(weights=rater_disagreement(rows).to_numpy(bool)).astype(np.int64),
    })


def overall_rows(stats: pd.DataFrame, unlabeled: int, pseudo: int = 0) -> list[tuple[str, object]]:
    """The headline: overall empty:lesion ratio, the spread of % empty across patients, lesion-free patients,
    unlabeled patients and how many of them hold a pseudo-label."""
    lesion, empty = int(stats["lesion"].sum()), int(stats["empty"].sum())
    pct = stats["pct_empty"]
    with_lesion = stats[stats["lesion"] > 0]["pct_empty"]
    rows = [
        ("labeled patients", len(stats)),
        ("  of them lesion-free", int((stats["lesion"] == 0).sum())),
        ("unlabeled patients", unlabeled),
        ("  of them pseudo-labelled (planned by --pseudo)", pseudo),
        ("slices", int(stats["slices"].sum())),
        ("lesion slices", lesion),
        ("empty slices", empty),
        ("empty : lesion overall", f"{empty / lesion:.2f} : 1" if lesion else "no lesion slices"),
        ("% empty per patient (min / median / max)", f"{pct.min():.0f} / {pct.median():.0f} / {pct.max():.0f}"),
        ("% empty, patients with lesions (p10 / p90)",
         f"{with_lesion.quantile(0.1):.0f} / {with_lesion.quantile(0.9):.0f}" if len(with_lesion) else "-"),
        ("empty neighbours available (within k)", int(stats["neighbour_empty"].sum())),
        ("lesion slices lost to resizing", int(stats["lost_slices"].sum())),
        ("lesion voxels lost to resizing", f"{int(stats['lost_voxels'].sum())} of "
                                           f"{int(stats['source_lesion_voxels'].sum())}"),
    ]
    if not (stats["n_raters"] >= 2).any():  # one-rater stores: today's headline
        return rows
    disagree, slices = int(stats["disagree_slices"].sum()), max(int(stats["slices"].sum()), 1)
    return rows + [
        ("raters per case (min-max)", f"{stats['n_raters'].min()}-{stats['n_raters'].max()}"),
        ("  multi-rater cases", int((stats["n_raters"] >= 2).sum())),
        ("rater disagreement slices", f"{disagree} ({100.0 * disagree / slices:.1f} %)"),
    ]


def unlabeled_patients(index: pd.DataFrame, split: str) -> int:
    """Patients of ``split`` with no mask."""
    rows = index if split == "all" else index[index["split"] == split]
    return int(rows.loc[~rows["labeled"], "case_id"].nunique())


def pseudo_patients(index: pd.DataFrame, split: str) -> int:
    """Unlabeled patients of ``split`` that hold a pseudo-label (``ctmodel pseudo-label``)."""
    rows = index if split == "all" else index[index["split"] == split]
    return int(rows.loc[~rows["labeled"] & rows["pseudo_confidence"].notna(), "case_id"].nunique())


def plot_stats(stats: pd.DataFrame, path: Path, title: str) -> Path:
    """Per-patient stacked bars (lesion vs empty slices, sorted by % empty) and the % empty distribution."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    check_output(path, "plot")

    ordered = stats.sort_values(["pct_empty", "case_id"]).reset_index(drop=True)
    figure = Figure(figsize=(11, 4.2), dpi=100)
    bars, hist = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(ordered))
    bars.bar(x, ordered["lesion"], color="#d62728", label="lesion slices")
    bars.bar(x, ordered["empty"], bottom=ordered["lesion"], color="#9e9e9e", label="empty slices")
    bars.set_xticks(x, ordered["case_id"], rotation=90, fontsize=6 if len(x) > 30 else 8)
    bars.set_ylabel("slices")
    bars.legend(loc="upper left", fontsize=8)
    bars.set_title("slices per patient (sorted by % empty)", fontsize=10)
    hist.hist(ordered["pct_empty"], bins=np.arange(0, 105, 5), color="#1f77b4", edgecolor="white")
    lesion, empty = ordered["lesion"].sum(), ordered["empty"].sum()
    overall = 100.0 * empty / (lesion + empty)
    hist.axvline(overall, color="black", linestyle="--", label=f"overall {overall:.0f} % "
                 f"({empty / max(lesion, 1):.2f} : 1)")
    hist.set_xlabel("% empty slices per patient")
    hist.set_ylabel("patients")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def save_stats_csv(stats: pd.DataFrame, path: Path) -> Path:
    """Write the per-patient table as CSV (temp file + rename); never over a store's own files."""
    write_text(check_output(path, "CSV"), stats.to_csv(index=False))
    return Path(path)
