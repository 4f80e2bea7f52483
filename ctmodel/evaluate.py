"""`ctmodel evaluate`: predict every labeled case of a split, score it in 3-D and per slice, write CSV + JSON.

3-D scores are on the scanner's native grid by default (the prediction inverted to the source geometry by
`ctmodel predict`'s numpy restore step, against the source mask file at the source spacing; with named raters,
against the consensus of their source files; a DICOM case's SEG or RTSTRUCT read onto its series' grid); a case
whose source masks are missing, changed or unreadable falls back to the store grid with one warning line. Slice-level scores are always on the store grid. docs/metrics.md
("Which grid") has the details. Cases with several raters are also scored against each rater and give the
inter-rater ceiling (ctmodel.raters_eval); calibration against the rater fraction is ctmodel.calibration.

Run: ctmodel evaluate runs/demo store.zarr --split test --figures figs/
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmodel.backends import Predictor, restore_numpy
from ctmodel.calibration import EMPTY, Reliability, calibration_summary, reliability, reliability_png
from ctmodel.config import check_inference
from ctmodel.metrics import (NO_SLICES, CaseMetrics, SliceScores, case_metrics, dice, false_positive_slices, iou,
                             slice_scores, summary_stats, surface_metrics, volume_ml)
from ctmodel.raters_eval import RATER_METRICS, RaterScores, rater_rows, rater_scores, rater_summary
from ctmodel.runfolder import eval_csv
from ctprep.atomic import write_text
from ctprep.errors import CaseError, RunError, UsageError
from ctprep.geometry import CaseGeometry, plane_view
from ctprep.nifti import NiftiVolume, check_same_grid
from ctprep.outputs import check_output_dir, check_outputs
from ctprep.raters import consensus
from ctprep.readers import is_dicom_mask, read_case_mask
from ctprep.splits import SPLIT_CHOICES as SPLITS
from ctprep.splits import fold_view
from ctprep.store import SliceStore

CASE_METRICS = ("dice", "iou", "nsd", "hd95_mm", "fp_rate", "pred_ml", "true_ml")
GRIDS = ("native", "store")  # native: the source file's voxels and spacing; store: the resized (Z, S, S) arrays
CALIBRATED_TARGETS = ("soft", "ugs")  # training targets whose runs are calibrated without --calibration


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of `ctmodel evaluate`."""

    split: str = "test"
    checkpoint: str = "best"
    tolerance_mm: float = 1.0  # NSD tolerance
    threshold: float = 0.5
    device: str = "auto"
    batch_size: int | None = None  # slices per forward pass (None: 32 on a GPU, 4 on the CPU)
    precision: str = "bf16"
    grid: str = "native"  # where 3-D scores are computed: native (as challenges score) or store (fast)
    calibration: bool = False  # ECE and reliability diagram for any run (always for soft/ugs targets)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UsageError(f"--split {self.split}: expected one of {', '.join(SPLITS)}")
        if self.grid not in GRIDS:
            raise UsageError(f"--grid {self.grid}: expected one of {', '.join(GRIDS)}")
        check_inference(self.checkpoint, self.threshold, self.batch_size)
        if not self.tolerance_mm >= 0:
            raise UsageError(f"--tolerance {self.tolerance_mm}: expected a distance >= 0 mm")


@dataclass(frozen=True)
class CaseScore:
    """One evaluated case: its metrics, the grid of its 3-D scores, network seconds, the overlay slice."""

    case_id: str
    metrics: CaseMetrics  # 3-D scores on ``grid``; slice-level scores always on the store grid
    network_seconds: float
    figure_slice: int  # slice with the most lesion (truth, else prediction)
    figure_pred: np.ndarray = field(repr=False)  # (S, S) bool prediction on that slice
    grid: str = "store"  # grid of the 3-D scores: native or store
    warning: str | None = None  # why a case asked for on the native grid was scored on the store grid
    raters: RaterScores | None = None  # scores against each rater (cases with >= 2 raters), on ``grid``
    reliability: Reliability | None = None  # calibration bin sums, on ``grid`` (when calibration was asked for)

    def row(self) -> dict:
        """The per-case CSV row (rater and calibration columns only where computed)."""
        row = {"case_id": self.case_id, "grid": self.grid, **self.metrics.row(),
               "network_seconds": self.network_seconds}
        if self.raters is not None:
            row.update(self.raters.row())
        if self.reliability is not None:
            row.update(ece=self.reliability.ece, calibration_voxels=self.reliability.voxels)
        return row


@dataclass
class Evaluation:
    """The result of evaluating one checkpoint on one split."""

    results: list[CaseScore]
    summary: dict
    csv_path: Path | None = None
    json_path: Path | None = None
    figures: list[Path] = field(default_factory=list)
    reliability_png: Path | None = None  # the reliability diagram, when calibration was computed

    @property
    def warnings(self) -> list[str]:
        """One line per case that fell back from the native to the store grid."""
        return [r.warning for r in self.results if r.warning]


def split_cases(store: SliceStore, split: str, fold: int | None = None) -> list[str]:
    """Labeled cases of ``split`` ('all' = every labeled case), in index order; RunError when there are none.
    With the ``fold`` of a cross-validation run the index is that run's fold view: 'val' is fold k (out-of-fold)."""
    index = store.index() if fold is None else fold_view(store.index(), fold, store.path)
    rows = index[index["labeled"]] if split == "all" else index[index["labeled"] & (index["split"] == split)]
    cases = sorted(rows["case_id"].unique().tolist())
    if not cases:
        raise RunError(f"{store.path}: no labeled cases in split {split!r}; pick another --split "
                       "(`ctprep info` lists the splits)")
    return cases


def figure_slice(pred: np.ndarray, truth: np.ndarray) -> int:
    """Index of the slice with the largest true lesion area (largest predicted area when the truth is empty)."""
    mask = truth if truth.any() else pred
    return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))


def source_spacing_mm(geom: CaseGeometry) -> tuple[float, float, float]:
    """Voxel size in mm along each axis of the source file's array (the affine's column lengths)."""
    affine = np.asarray(geom.source_affine, dtype=np.float64)
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def check_unchanged(path: Path, recorded: dict) -> None:
    """CaseError unless ``path`` exists with the size and head/tail hash recorded at convert time (mtime ignored)."""
    from ctprep.sources import file_fingerprint

    try:
        current = file_fingerprint(path)
    except FileNotFoundError as err:
        raise CaseError(f"{path}: expected the source mask recorded at convert time, found no file; restore it "
                        "to score the case on the native grid") from err
    except OSError as err:
        raise CaseError(f"{path}: expected a readable source mask, found {err.strerror or err}; fix its "
                        "permissions or restore it") from err
    if (current["size"], current["sha256_head_tail"]) != (recorded.get("size"), recorded.get("sha256_head_tail")):
        raise CaseError(f"{path}: expected the source mask recorded at convert time, found a changed file "
                        "(size or hash differ); re-convert the case to score it on the native grid")


def source_raters(store: SliceStore, case_id: str, geom: CaseGeometry) -> dict[str, np.ndarray]:
    """Rater id -> the rater's source mask file as bool (nonzero = lesion) in the file's own voxel order, in the
    store's rater order; each file checked like the one-mask case's (recorded fingerprint, recorded grid).

    Raises:
        CaseError: no mask path recorded, a file is missing, changed since convert, or not on the recorded grid.
    """
    attrs = store.case_attrs(case_id)  # read once: the source record and the rater order
    source = attrs.get("source") or {}
    entries = source.get("raters") or {}
    if not entries and isinstance(source.get("mask"), dict):
        entries = {"1": source["mask"]}  # a store written before raters were recorded: its one mask
    if not entries or not all(isinstance(e, dict) and e.get("path") for e in entries.values()):
        raise CaseError(f"{store.path}: expected a source mask path recorded for case {case_id}, found none; "
                        "re-convert with this ctstack to score it on the native grid")
    recorded = NiftiVolume(np.broadcast_to(np.float32(0), geom.source_shape), np.asarray(geom.source_affine),
                           Path((source.get("image") or {}).get("path") or store.path))
    masks, series = {}, None
    for rater in attrs.get("rater_ids") or list(entries):
        path = Path(entries[rater]["path"])
        check_unchanged(path, entries[rater])
        dicom = is_dicom_mask(path)
        if dicom:
            series = series or dicom_source_grid(path, recorded)  # headers read once per case
        masks[rater] = read_case_mask(path, series if dicom else recorded)  # shape and affine checked
    return masks


def dicom_source_grid(path: Path, recorded: NiftiVolume) -> NiftiVolume:
    """The series grid a DICOM SEG or RTSTRUCT source mask is read onto (headers only,
    ``ctprep.dicom.series_grid``), checked against the one recorded at convert time (``recorded``: its shape,
    affine and image folder)."""
    from ctprep.dicom import series_grid

    try:
        grid = series_grid(recorded.path, allow_tilt=True)  # a tilted series is in a store only with --allow-tilt
    except UsageError as err:  # ctstack[dicom] missing: this case falls back to the store grid, the others go on
        raise CaseError(f"{path}: {err}") from err
    try:
        check_same_grid(recorded.path, grid.data.shape, grid.affine, recorded)
    except CaseError as err:
        raise CaseError(f"{recorded.path}: expected the series recorded at convert time, found another grid (shape "
                        f"{grid.data.shape}, recorded {recorded.data.shape}); re-convert the case to score it on "
                        "the native grid") from err
    return grid


def source_truth(store: SliceStore, case_id: str, geom: CaseGeometry) -> np.ndarray:
    """The case's consensus on the source grid: the store's consensus rule applied to its raters' source files
    (``source_raters``), in the files' own voxel order; for one rater, its mask file itself.

    Raises:
        CaseError: no mask path recorded, a file is missing, changed since convert, or not on the recorded grid.
    """
    return consensus(list(source_raters(store, case_id, geom).values()), store.consensus)


def native_metrics(probs: np.ndarray, truth: np.ndarray, geom: CaseGeometry, threshold: float,
                   tolerance_mm: float, slices: SliceScores) -> CaseMetrics:
    """3-D scores on the source grid: ``probs`` inverted by predict's numpy restore step (the torch
    path predict takes on a GPU matches it within 1e-5), then thresholded, against the source ``truth`` at the source
    spacing; false-positive slices counted on the source's axial slices; ``slices`` (store grid) kept as given."""
    return native_scores(restore_numpy(probs, geom, threshold)[0].astype(bool), truth, geom, tolerance_mm, slices)


def native_scores(pred: np.ndarray, truth: np.ndarray, geom: CaseGeometry, tolerance_mm: float,
                  slices: SliceScores) -> CaseMetrics:
    """``native_metrics`` of a prediction already on the source grid (bool, the file's voxel order)."""
    spacing_mm = source_spacing_mm(geom)
    surface_dice, hd = surface_metrics(pred, truth, spacing_mm, tolerance_mm)
    fp = false_positive_slices(plane_view(pred, geom), plane_view(truth, geom))
    return CaseMetrics(dice=dice(pred, truth), iou=iou(pred, truth), nsd=surface_dice, hd95_mm=hd,
                       pred_ml=volume_ml(pred, spacing_mm), true_ml=volume_ml(truth, spacing_mm), slices=slices,
                       fp_slices=fp)


def evaluate_case(store: SliceStore, case_id: str, predictor: Predictor, tolerance_mm: float,
                  threshold: float, grid: str = "native", calibration: bool = False) -> CaseScore:
    """Predict one stored case; score it in 3-D on ``grid`` (store-grid fallback with a warning) against the
    consensus and, with several raters, against each rater; per slice on the store grid; with ``calibration``,
    the reliability bin sums of the probabilities against the rater fraction on the same grid."""
    image, truth = store.read_image(case_id), store.read_mask(case_id).astype(bool)
    start = time.perf_counter()
    probs = np.asarray(predictor(image))
    seconds = time.perf_counter() - start
    pred, geom = probs >= threshold, store.geometry(case_id)
    z, warning = figure_slice(pred, truth), None
    if grid == "native":
        try:
            raters = source_raters(store, case_id, geom)
        except CaseError as err:
            warning = f"{err} (case {case_id} scored on the store grid)"
        else:
            source_probs = restore_numpy(probs, geom, threshold, probabilities=True)[0]
            source_pred = source_probs >= threshold  # the very mask restore_numpy thresholds
            source = consensus(list(raters.values()), store.consensus)
            metrics = native_scores(source_pred, source, geom, tolerance_mm, slice_scores(pred, truth))
            return CaseScore(case_id, metrics, seconds, z, pred[z].copy(), "native",
                             raters=rater_scores(source_pred, raters, source_spacing_mm(geom), tolerance_mm),
                             reliability=reliability(source_probs, np.stack(list(raters.values())), threshold)
                             if calibration else None)
    metrics = case_metrics(pred, truth, geom.stored_spacing_mm, tolerance_mm)
    rater_ids = store.rater_ids(case_id)
    stored = store.read_raters(case_id) if calibration or len(rater_ids) >= 2 else None
    scores = None if stored is None else rater_scores(pred, dict(zip(rater_ids, stored)), geom.stored_spacing_mm,
                                                      tolerance_mm)
    return CaseScore(case_id, metrics, seconds, z, pred[z].copy(), "store", warning, scores,
                     reliability(probs, stored, threshold) if calibration else None)


def evaluate_cases(store: SliceStore, case_ids: list[str], predictor: Predictor, tolerance_mm: float = 1.0,
                   threshold: float = 0.5, progress: bool = True, grid: str = "native",
                   calibration: bool = False) -> list[CaseScore]:
    """Evaluate each case with a progress bar over cases."""
    from ctprep.console import track

    items = track(case_ids, "evaluate", unit="case") if progress else case_ids
    return [evaluate_case(store, case_id, predictor, tolerance_mm, threshold, grid, calibration)
            for case_id in items]


def grid_label(results: list[CaseScore]) -> str:
    """The grid of a set of 3-D scores: 'native', 'store', or 'mixed' when cases differ."""
    grids = {r.grid for r in results}
    return grids.pop() if len(grids) == 1 else "mixed"


def metric_stats(results: list[CaseScore]) -> dict:
    """Statistics per 3-D metric over ``results``, each labelled with the grid it was computed on."""
    grid = grid_label(results)
    return {name: {**summary_stats([getattr(r.metrics, name) for r in results]), "grid": grid} for name in CASE_METRICS}


def summarize(results: list[CaseScore]) -> dict:
    """Per-metric statistics over cases (and per grid), slice-level means pooled over all slices (both ways), the
    false-positive rate pooled over all lesion-free slices, the grid of every figure, timing; a ``raters`` block
    when some case has several raters, a ``calibration`` block when calibration was computed."""
    return {**_summary(results), **raters_block(results), **calibration_block(results)}


def raters_block(results: list[CaseScore]) -> dict:
    """{"raters": rater_summary of the multi-rater cases}, or {} when every case has one rater."""
    rated = [r for r in results if r.raters is not None]
    if not rated:
        return {}
    cases = [({m: getattr(r.metrics, m) for m in RATER_METRICS}, r.raters) for r in rated]
    return {"raters": rater_summary(cases, grid_label(rated))}


def calibration_block(results: list[CaseScore]) -> dict:
    """{"calibration": ECE and bins pooled over the cases' calibration regions}, or {} when not computed."""
    calibrated = [r for r in results if r.reliability is not None]
    if not calibrated:
        return {}
    return {"calibration": calibration_summary(pooled_reliability(calibrated), grid_label(calibrated))}


def pooled_reliability(results: list[CaseScore]) -> Reliability:
    """The calibration bin sums of every case that has them, pooled (voxel-weighted)."""
    return sum((r.reliability for r in results if r.reliability is not None), EMPTY)


def _summary(results: list[CaseScore]) -> dict:
    """The summary of one-rater evaluation (every key but ``raters`` and ``calibration``)."""
    pooled = sum((r.metrics.slices for r in results), SliceScores(0, 0, 0.0, 0.0))
    fp = sum((r.metrics.fp_slices for r in results), NO_SLICES)
    n_slices = max(1, pooled.n_slices)
    by_grid = {grid: [r for r in results if r.grid == grid] for grid in GRIDS}
    return {
        "cases": len(results),
        "grid": grid_label(results),
        "grid_cases": {grid: len(cases) for grid, cases in by_grid.items()},
        "store_grid_fallbacks": {r.case_id: r.warning for r in results if r.warning},
        "metrics": metric_stats(results),
        "metrics_by_grid": {grid: metric_stats(cases) for grid, cases in by_grid.items() if cases},
        "slice_level": {
            "empty slices = 1": {"dice": pooled.mean("dice", "one"), "iou": pooled.mean("iou", "one"),
                                 "slices": pooled.n_slices, "grid": "store"},
            "empty slices excluded": {"dice": pooled.mean("dice", "exclude"), "iou": pooled.mean("iou", "exclude"),
                                      "slices": pooled.n_slices - pooled.n_empty, "grid": "store"},
        },
        "fp_slices": {"rate": fp.rate, "false_positive": fp.false_positive, "empty_truth": fp.empty_truth,
                      "grid": grid_label(results)},
        "network_seconds_per_case": float(np.mean([r.network_seconds for r in results])) if results else math.nan,
        "network_ms_per_slice": 1000.0 * sum(r.network_seconds for r in results) / n_slices,
    }


def summary_rows(summary: dict) -> list[tuple[object, ...]]:
    """Table rows: metric (with its grid), mean ± sd, median (3-D per case; fp_rate per case over its lesion-free
    slices), then the slice-level means both ways and the pooled false-positive rate."""
    rows: list[tuple[object, ...]] = []
    for name, stats in summary["metrics"].items():
        kind = "per case, lesion-free slices" if name == "fp_rate" else "3-D per case"
        rows.append((f"{name}{_truth_label(name, summary)} ({kind}, {stats['grid']} grid)",
                     f"{stats['mean']:.3f} ± {stats['sd']:.3f}", stats["median"]))
    for way, values in summary["slice_level"].items():
        for metric in ("dice", "iou"):
            rows.append((f"slice {metric} ({way}, {values['grid']} grid)", f"{values[metric]:.3f}",
                         f"{values['slices']} slices"))
    fp = summary["fp_slices"]
    rows.append((f"slice FP rate on lesion-free slices (pooled, {fp['grid']} grid)", f"{fp['rate']:.3f}",
                 f"{fp['false_positive']} of {fp['empty_truth']} slices"))
    if "raters" in summary:  # the vs-consensus rows again only when the multi-rater cases are not all the cases
        rows += rater_rows(summary["raters"], with_consensus=summary["raters"]["cases"] != summary["cases"])
    if "calibration" in summary:
        cal = summary["calibration"]
        rows.append((f"ECE vs rater fraction ({cal['n_bins']} bins, prediction or any rater positive, "
                     f"{cal['grid']} grid)", f"{cal['ece']:.4f}", f"{cal['voxels']} voxels"))
    return rows


def _truth_label(name: str, summary: dict) -> str:
    """' vs consensus' (' of consensus' for true_ml) on the rows scored against the truth when raters are present."""
    if "raters" not in summary or name == "pred_ml":
        return ""
    return " of consensus" if name == "true_ml" else " vs consensus"


def write_results(results: list[CaseScore], summary: dict, csv_path: Path) -> Path:
    """Write the per-case CSV and the summary JSON beside it (same stem, .json), each via temp + rename."""
    import pandas as pd

    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(csv_path, pd.DataFrame([r.row() for r in results]).to_csv(index=False))
    json_path = csv_path.with_suffix(".json")
    write_text(json_path, json.dumps(summary, indent=2, allow_nan=True))
    return json_path


def check_layout(run_layout, store: SliceStore, run_dir: Path, doing: str = "evaluate on") -> None:
    """Refuse a store whose window/size/dtype differ from the training store's (``doing``: the advice's verb)."""
    if run_layout != store.layout:
        raise RunError(f"{store.path}: store layout {store.layout.to_attrs()} differs from run {run_dir}'s "
                       f"{run_layout.to_attrs()}; {doing} a store converted with the run's options")


def run_identity(run_dir: Path, checkpoint: Path, epoch: int, store: SliceStore, cfg: EvaluateConfig) -> dict:
    """What an evaluation depends on; `ctmodel compare` re-uses a saved one only when this matches."""
    stat = checkpoint.stat()
    index = (store.path / "index.parquet").stat()
    return {"run": str(Path(run_dir).resolve()), "checkpoint": cfg.checkpoint, "epoch": epoch,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "checkpoint_bytes": stat.st_size,
            "store": str(store.path.resolve()), "index_mtime_ns": index.st_mtime_ns, "split": cfg.split,
            "tolerance_mm": cfg.tolerance_mm, "threshold": cfg.threshold, "grid": cfg.grid}


def evaluate(run_dir: Path, store_path: Path, cfg: EvaluateConfig = EvaluateConfig(), out: Path | None = None,
             figures: Path | None = None, progress: bool = True) -> Evaluation:
    """`ctmodel evaluate`: load a checkpoint, evaluate the split, write CSV + JSON (+ overlay figures)."""
    from ctmodel.checkpoint import load_run
    from ctmodel.device import resolve_device
    from ctmodel.backends import model_predictor

    csv_path = Path(out) if out else eval_csv(run_dir, cfg.split)
    if csv_path.suffix.lower() == ".json":
        raise UsageError(f"{csv_path}: expected a .csv path for --out, found .json (the summary JSON goes beside "
                         "the CSV and would replace it); name the CSV, e.g. eval.csv")
    check_outputs(csv_path, csv_path.with_suffix(".json"), what="evaluation")  # before any work: never a store's files
    if figures:
        check_output_dir(Path(figures), "figures folder")
    store = SliceStore.open(store_path)
    device = resolve_device(cfg.device)
    run = load_run(Path(run_dir), cfg.checkpoint, device)
    check_layout(run.layout, store, Path(run_dir))
    calibrate = cfg.calibration or run_target(run.config) in CALIBRATED_TARGETS
    if calibrate:
        check_outputs(reliability_png(csv_path), what="reliability diagram")
    cases = split_cases(store, cfg.split, (run.config.get("train") or {}).get("fold"))
    predictor = model_predictor(run.model, device, cfg.batch_size, cfg.precision)
    results = evaluate_cases(store, cases, predictor, cfg.tolerance_mm, cfg.threshold, progress, cfg.grid,
                             calibrate)
    summary = {"identity": run_identity(Path(run_dir), run.path, run.epoch, store, cfg), **summarize(results)}
    json_path = write_results(results, summary, csv_path)
    written = write_figures(store, results, Path(figures)) if figures else []
    png = None
    if calibrate:
        from ctmodel.calibration import write_reliability

        png = write_reliability(pooled_reliability(results), reliability_png(csv_path), f"{Path(run_dir).name} on {cfg.split}")
    return Evaluation(results, summary, csv_path, json_path, written, png)


def run_target(config: dict) -> str:
    """The training target recorded in a run's config (``train.target``); 'consensus' for runs without one."""
    return str((config.get("train") or {}).get("target") or "consensus")


def write_figures(store: SliceStore, results: list[CaseScore], out_dir: Path) -> list[Path]:
    """Overlay PNGs of the best, median and worst cases by 3-D Dice (one per distinct case)."""
    from ctmodel.overlays import write_overlays

    return write_overlays(store, results, out_dir)
