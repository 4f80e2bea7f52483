"""`ctmodel predict`: NIfTI scans or DICOM series in, masks (or probabilities) out on the source grid, header and
orientation kept; as NIfTI, or as a DICOM SEG over a DICOM series (``ctmodel.scans``).

Run: ctmodel predict runs/demo scan.nii.gz scan_mask.nii.gz   (or folders: imagesTs/ predictions/)
     ctmodel predict runs/demo dicom/case_1/ segs/ --format dicom-seg
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ctmodel.backends import Backend, Predictor, numpy_backend, torch_backend
from ctmodel.config import check_inference
from ctmodel.dicom_seg import SegAuthor
from ctmodel.scans import (OutputFormat, check_output_path, check_outside_series, check_sources, is_output_file,
                           output_name, read_scan, scans_in, write_scan)
from ctprep.discover import nifti_stem
from ctprep.errors import CaseError, CtstackError, OutputError, UsageError
from ctprep.outputs import check_output
from ctprep.store import StoreLayout

STAGES = ("read", "preprocess", "network", "invert", "write")
UNCERTAINTY_SUFFIX = "_uncertainty"  # NAME.nii.gz -> NAME_uncertainty.nii.gz, the UGS band map beside the mask
MAX_LISTED = 3  # existing outputs named in the refusal


@dataclass(frozen=True)
class PredictConfig:
    """Options of `ctmodel predict`."""

    checkpoint: str = "best"  # best (highest val Dice) or last
    device: str = "auto"
    threshold: float = 0.5  # on probabilities interpolated back to the source grid
    probabilities: bool = False  # write float32 probabilities instead of a uint8 mask
    batch_size: int | None = None  # slices per forward pass (None: 32 on a GPU, 4 on the CPU)
    precision: str = "bf16"  # autocast on CUDA; CPU runs fp32
    overwrite: bool = False  # replace existing output files (an input file is never overwritten)
    uncertainty: bool = False  # UGS runs: also write the band p_union - p_intersection (float32) beside the mask
    format: str = "nifti"  # nifti, or dicom-seg (a DICOM SEG per DICOM series; --probabilities: FRACTIONAL)
    allow_tilt: bool = False  # DICOM input: resample gantry-tilted series instead of refusing them

    def __post_init__(self) -> None:
        check_inference(self.checkpoint, self.threshold, self.batch_size)
        OutputFormat(self.format)  # refuses an unknown format
        if self.uncertainty and self.format == "dicom-seg":
            raise UsageError("--uncertainty writes a NIfTI band map; use it with --format nifti")

    def output(self, run_dir: Path) -> OutputFormat:
        """The output format of these options, authored by run ``run_dir``."""
        return OutputFormat(self.format, self.probabilities, self.allow_tilt,
                            SegAuthor(Path(run_dir).resolve().name, self.checkpoint, self.threshold))


@dataclass(frozen=True)
class ScanResult:
    """One predicted scan: where it went, its size, lesion volume and the seconds spent per stage."""

    source: Path
    output: Path
    n_slices: int
    lesion_ml: float  # thresholded lesion volume on the source grid
    seconds: dict[str, float]  # per stage in STAGES

    @property
    def total_seconds(self) -> float:
        """Wall time of the whole scan."""
        return sum(self.seconds.values())


@dataclass
class PredictReport:
    """All scans of one `ctmodel predict` call, and one line per scan that failed."""

    results: list[ScanResult] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[object, ...]]:
        """Per-scan summary rows: output, slices, seconds, lesion volume (mL)."""
        return [(r.output.name, r.n_slices, r.total_seconds, r.lesion_ml) for r in self.results]

    def summary_rows(self) -> list[tuple[str, object]]:
        """Totals: scans written and failed, mean seconds per scan and per stage."""
        rows: list[tuple[str, object]] = [("scans written", len(self.results)), ("scans failed", len(self.failed))]
        if self.results:
            rows.append(("seconds per scan", float(np.mean([r.total_seconds for r in self.results]))))
            rows += [(f"  {stage}", float(np.mean([r.seconds[stage] for r in self.results]))) for stage in STAGES]
        return rows


def uncertainty_path(output: Path) -> Path:
    """Where the uncertainty map of ``output`` goes: ``NAME_uncertainty.nii[.gz]`` in the same folder."""
    stem = nifti_stem(output)
    return output.with_name(stem + UNCERTAINTY_SUFFIX + output.name[len(stem):])


def plan_outputs(source: Path, output: Path, overwrite: bool = False, fmt: str = "nifti") -> list[tuple[Path, Path]]:
    """(input, output) pairs: one scan (a NIfTI file or a DICOM series folder) to one file (or into a folder), or
    every scan of a folder (``scans.scans_in``) into a folder; the whole set is checked (``check_pairs``) before
    anything is written."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise CaseError(f"{source}: not found; pass a .nii/.nii.gz file, a DICOM series folder or a folder of them")
    scans = scans_in(source) if source.is_dir() else [source]
    check_sources(scans, fmt)
    check_output_path(output, fmt)
    if source.is_dir() and scans != [source]:
        if is_output_file(output, fmt):
            raise UsageError(f"{output}: INPUT {source} is a folder of scans, so OUTPUT must be a folder, not a file")
        if not scans:
            raise CaseError(f"{source}: expected .nii/.nii.gz scans or DICOM series folders in this folder, found "
                            "none; check the path")
        pairs = [(scan, output / output_name(scan, fmt)) for scan in scans]
    elif output.is_dir() or (source.is_dir() and not is_output_file(output, fmt)):
        pairs = [(source, output / output_name(source, fmt))]
    elif not is_output_file(output, fmt):
        wanted = "a .dcm" if fmt == "dicom-seg" else "a .nii or .nii.gz"
        raise UsageError(f"{output}: expected {wanted} output path (or an existing folder) for --format {fmt}")
    else:
        pairs = [(source, output)]
    check_outside_series(pairs)
    check_pairs(pairs, overwrite)
    return pairs


def check_pairs(pairs: list[tuple[Path, Path]], overwrite: bool = False) -> None:
    """Refuse, before anything is written, an output that is an input file (links and hard links resolved) or
    a store's reserved file (UsageError, exit 2), two inputs with one output, and existing outputs unless
    ``overwrite`` (OutputError, exit 1)."""
    inputs = {_file_key(src): src for src, _ in pairs}
    for src, dst in pairs:
        victim = inputs.get(_file_key(dst)) if os.path.lexists(dst) else None
        if victim is not None:
            raise UsageError(f"{dst}: expected a new output file, found the input {victim} (the prediction of "
                             f"{src.name} would overwrite it); choose another OUTPUT")
        check_output(dst, "prediction")
    by_output: dict[Path, Path] = {}
    for src, dst in pairs:
        first = by_output.setdefault(dst.resolve(), src)
        if first != src:
            raise OutputError(f"{dst}: expected one input per output, found two ({_short(first, src)} and "
                              f"{_short(src, first)}); "
                              "rename or move one of them, or predict them into different OUTPUT folders")
    existing = [dst for _, dst in pairs if os.path.lexists(dst)]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        shown = ", ".join(p.name for p in existing[1:MAX_LISTED])
        also = f" ({shown}{', ...' if len(existing) > MAX_LISTED else ''})" if shown else ""
        raise OutputError(f"{existing[0]}: expected a new output file, found an existing one{more}{also}; "
                          "pass --overwrite to replace them, or choose another OUTPUT")


def _short(path: Path, other: Path) -> str:
    """``path``'s name, or its last two parts when ``other`` has the same name (series folders a/CT and b/CT)."""
    return path.name if path.name != other.name else str(Path(*path.parts[-2:]))


def _file_key(path: Path) -> tuple[int, int] | Path:
    """What makes two paths one file: (device, inode) when it exists (hard links, case-insensitive names),
    else the resolved path."""
    try:
        info = os.stat(path)
    except OSError:
        return Path(path).resolve()
    return info.st_dev, info.st_ino


def predict_scan(source: Path, destination: Path, predictor: Predictor | Backend, layout: StoreLayout,
                 threshold: float = 0.5, probabilities: bool = False, out: OutputFormat | None = None) -> ScanResult:
    """Read, preprocess, predict, invert and write one scan (``out``: format, DICOM options; NIfTI by default);
    CaseError when the input is unreadable."""
    if destination.resolve() == Path(source).resolve():
        raise CaseError(f"{source}: the output would overwrite the input; choose another OUTPUT")
    out = _with_probabilities(out, probabilities)
    backend = predictor if isinstance(predictor, Backend) else numpy_backend(predictor)
    seconds, clock = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = now - clock, now

    volume, headers = read_scan(source, out); lap("read")
    stored, geom = backend.prepare(volume.data, volume.affine, layout); lap("preprocess")
    probs = backend.network(stored); lap("network")
    probs, band = probs if isinstance(probs, tuple) else (probs, None)  # band: --uncertainty (UGS runs)
    written, lesion_voxels = backend.restore(probs, geom, threshold, out.probabilities)
    band_map = None if band is None else backend.restore(band, geom, threshold, True)[0]; lap("invert")
    write_scan(volume, headers, written, destination, out)
    if band_map is not None:
        write_scan(volume, None, band_map.astype(np.float32), uncertainty_path(destination), out,
                   "ctstack uncertainty")
    lap("write")
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    return ScanResult(Path(source), destination, int(geom.n_slices), lesion_voxels * voxel_ml, seconds)


def _with_probabilities(out: OutputFormat | None, probabilities: bool) -> OutputFormat:
    """``out`` (NIfTI by default) writing probabilities when either it or ``probabilities`` asks for them."""
    out = out or OutputFormat()
    return replace(out, probabilities=True) if probabilities else out


def predict_paths(source: Path, output: Path, predictor: Predictor | Backend, layout: StoreLayout,
                  threshold: float = 0.5, probabilities: bool = False, progress: bool = True,
                  overwrite: bool = False, out: OutputFormat | None = None) -> PredictReport:
    """Predict one scan or every scan of a folder; a bad scan fails alone (one line in ``report.failed``).

    Every output is checked before the first is written (``plan_outputs``); existing ones need ``overwrite``.
    """
    out = _with_probabilities(out, probabilities)
    pairs = plan_outputs(source, output, overwrite, out.format)
    return predict_pairs(pairs, predictor, layout, threshold, out.probabilities, progress, out)


def predict_pairs(pairs: list[tuple[Path, Path]], predictor: Predictor | Backend, layout: StoreLayout,
                  threshold: float = 0.5, probabilities: bool = False, progress: bool = True,
                  out: OutputFormat | None = None) -> PredictReport:
    """Predict each (input, output) pair of a checked plan (``plan_outputs``), with a progress bar over scans."""
    from ctprep.console import track

    report = PredictReport()
    items = track(pairs, "predict", unit="scan") if progress else pairs
    for src, dst in items:
        try:
            report.results.append(predict_scan(src, dst, predictor, layout, threshold, probabilities, out))
        except CtstackError as err:
            report.failed.append(str(err))
    return report


def predict(run_dir: Path, source: Path, output: Path, cfg: PredictConfig = PredictConfig(),
            progress: bool = True) -> PredictReport:
    """`ctmodel predict`: load the run's checkpoint and predict ``source`` (file or folder) into ``output``."""
    from ctmodel.checkpoint import load_run
    from ctmodel.device import resolve_device

    pairs = plan_outputs(source, output, cfg.overwrite, cfg.format)  # refuse bad paths before loading the model
    if cfg.uncertainty:
        check_pairs(pairs + [(src, uncertainty_path(dst)) for src, dst in pairs], cfg.overwrite)
    device = resolve_device(cfg.device)
    run = load_run(Path(run_dir), cfg.checkpoint, device)
    if cfg.uncertainty and run.model_config.heads != "ugs":
        raise UsageError(f"{run_dir}: --uncertainty needs a run trained with --target ugs, found a "
                         f"{run.model_config.heads} head; drop --uncertainty or train with --target ugs")
    backend = torch_backend(run.model, device, cfg.batch_size, cfg.precision, cfg.uncertainty)
    return predict_pairs(pairs, backend, run.layout, cfg.threshold, cfg.probabilities, progress,
                         cfg.output(run_dir))
