"""`ctmodel compare`: several runs side by side, as the source study's Tables 5.1/5.2 (statistics over several
runs per configuration: compare_stats.py).

Run: ctmodel compare runs/dual runs/unet store.zarr --split test
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ctmodel.compare_stats import CompareStats, StatsConfig, compare_stats, plot_metrics, write_outputs
from ctmodel.evaluate import EvaluateConfig, evaluate, run_identity
from ctmodel.runfolder import CHECKPOINT_FILES, CONFIG_FILE, SUMMARY_FILE, eval_csv
from ctprep.errors import RunError
from ctprep.store import SliceStore

COLUMNS = ("run", "model", "3-D grid", "IoU (3-D)", "Dice (3-D)", "NSD", "HD95 mm", "FP rate (lesion-free slices)",
           "slice IoU (empty=1)",
           "slice Dice (empty=1)", "slice IoU (excl. empty)", "slice Dice (excl. empty)", "parameters",
           "peak memory MB", "training min", "inference s/case", "evaluation")


@dataclass(frozen=True)
class RunComparison:
    """One run's row of the comparison table and where its numbers came from."""

    run_dir: Path
    summary: dict  # evaluate's summary JSON
    training: dict  # the run's summary.json (parameters, train_seconds, peak_memory_mb), {} if absent
    model: str
    reused: bool  # True when an existing eval JSON matched the checkpoint and options
    config: dict = field(default_factory=dict)  # the run's config.json ({} if absent)
    cases: pd.DataFrame | None = field(default=None, repr=False)  # eval-<split>.csv: per-case metrics

    def row(self) -> tuple[object, ...]:
        """The row under COLUMNS; '-' where the run folder does not record a figure."""
        metrics, slices = self.summary["metrics"], self.summary["slice_level"]
        one, excl = slices["empty slices = 1"], slices["empty slices excluded"]
        seconds = self.training.get("train_seconds")
        values = (self.run_dir.name, self.model, self.summary.get("grid", "store"), metrics["iou"]["mean"],
                  metrics["dice"]["mean"], metrics["nsd"]["mean"], metrics["hd95_mm"]["mean"],
                  self.summary["fp_slices"]["rate"], one["iou"], one["dice"], excl["iou"],
                  excl["dice"], self.training.get("parameters"), self.training.get("peak_memory_mb"),
                  seconds / 60.0 if seconds is not None else None, self.summary["network_seconds_per_case"],
                  "re-used" if self.reused else "evaluated")
        return tuple("-" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values)


def side_by_side(rows: list[RunComparison]) -> tuple[list[str], list[tuple[object, ...]]]:
    """(columns, rows) of the table with one column per run and one row per figure (fits a terminal)."""
    columns = ["", *(r.run_dir.name for r in rows)]
    values = [r.row() for r in rows]
    return columns, [(name, *(v[i] for v in values)) for i, name in enumerate(COLUMNS) if i > 0]


def _read_json(path: Path) -> dict:
    """A JSON file as a dict, {} when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def saved_evaluation(run_dir: Path, store_path: Path, cfg: EvaluateConfig) -> dict | None:
    """evaluate's summary JSON of this run when it was made from the same checkpoint, store and options."""
    saved = _read_json(eval_csv(run_dir, cfg.split).with_suffix(".json"))
    checkpoint = Path(run_dir) / CHECKPOINT_FILES[cfg.checkpoint]
    if not saved or not checkpoint.exists():
        return None
    identity = saved.get("identity", {})  # checkpoint size and mtime identify the weights without loading them
    current = run_identity(run_dir, checkpoint, identity.get("epoch", -1), SliceStore.open(store_path), cfg)
    return saved if identity == current and "fp_slices" in saved else None  # older JSONs lack the FP rate


def compare_run(run_dir: Path, store_path: Path, cfg: EvaluateConfig, progress: bool = True) -> RunComparison:
    """Re-use the run's eval JSON when it matches, else evaluate it (writing RUN/eval-<split>.csv/.json)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / CONFIG_FILE)
    check_fold_split(run_dir, config, cfg.split)
    summary = saved_evaluation(run_dir, store_path, cfg)
    reused = summary is not None
    if summary is None:
        summary = evaluate(run_dir, store_path, cfg, progress=progress).summary
    training = _read_json(run_dir / SUMMARY_FILE)
    if "parameters" not in training and "parameters" in config:
        training = {**training, "parameters": config["parameters"]}
    model = config.get("model", {}).get("name", "?") if isinstance(config.get("model"), dict) else "?"
    return RunComparison(run_dir, summary, training, model, reused, config, _read_cases(eval_csv(run_dir, cfg.split)))


def check_fold_split(run_dir: Path, config: dict, split: str) -> None:
    """RunError for a cross-validation run compared on a split other than test or val (its held-out fold: the
    out-of-fold scores): it trained on the other folds, so scores there would be inflated."""
    fold = (config.get("train") or {}).get("fold")
    if fold is not None and split not in ("test", "val"):
        raise RunError(f"{run_dir}: a fold-{fold} run trained on the other folds, expected --split test or val "
                       f"(val = its held-out fold {fold}), found --split {split}; compare cross-validation runs on "
                       "the test split or out-of-fold")


def _read_cases(path: Path) -> pd.DataFrame | None:
    """The per-case CSV of an evaluation, None when missing or unreadable."""
    try:
        return pd.read_csv(path, dtype={"case_id": str})
    except (OSError, ValueError):
        return None


def compare(run_dirs: list[Path], store_path: Path, cfg: EvaluateConfig = EvaluateConfig(),
            progress: bool = True) -> list[RunComparison]:
    """`ctmodel compare`: evaluate (or re-use) every run on the same store and split."""
    if not run_dirs:
        raise RunError("no runs given; pass one or more run folders before the store, e.g. "
                       "`ctmodel compare runs/a runs/b store.zarr`")
    SliceStore.open(store_path)  # a bad store fails before any model is loaded
    return [compare_run(Path(run), store_path, cfg, progress) for run in run_dirs]


@dataclass(frozen=True)
class CompareReport:
    """What `ctmodel compare` prints and writes: the runs side by side, the statistics, the files written."""

    title: str
    runs: list[RunComparison]
    stats: CompareStats
    files: list[Path]

    def tables(self) -> list[tuple[str, list[str], list]]:
        """(title, headers, rows) per printed table; the statistics when a configuration has several runs or
        files were asked for."""
        tables = [(self.title, *side_by_side(self.runs))]
        if self.files or any(n > 1 for n in self.stats.groups["runs"]):
            tables.append(("per configuration (mean ± sd over runs)", *self.stats.group_rows()))
            if self.stats.differences:
                tables.append(("paired per-case differences B - A (bootstrap 95 % CI, Wilcoxon signed-rank p)",
                               *self.stats.difference_rows()))
        return tables


def compare_report(run_dirs: list[Path], store_path: Path, cfg: EvaluateConfig = EvaluateConfig(),
                   stats_cfg: StatsConfig = StatsConfig(), out: Path | None = None, plot: Path | None = None,
                   progress: bool = True) -> CompareReport:
    """`ctmodel compare` whole: evaluate (or re-use) every run, the statistics, OUT.md/OUT.csv and the plots."""
    runs = compare(run_dirs, store_path, cfg, progress)
    stats = compare_stats(runs, stats_cfg)
    title = f"ctmodel compare on {store_path} ({cfg.split})"
    files = [*write_outputs(stats, out, title)] if out is not None else []
    files += plot_metrics(runs, plot) if plot is not None else []
    return CompareReport(title, runs, stats, files)
