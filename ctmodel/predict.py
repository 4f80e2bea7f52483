"""`ctmodel predict`: NIfTI scans in, masks (or probabilities) out on the source grid, header and orientation kept.

Run: ctmodel predict runs/demo scan.nii.gz scan_mask.nii.gz   (or folders: imagesTs/ predictions/)
"""
from __future__ import annotations

import gzip
import io
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ctmodel.config import check_inference
from ctprep import geometry
from ctprep.atomic import write_bytes
from ctprep.discover import nifti_stem
from ctprep.errors import CaseError, CtstackError, OutputError, UsageError
from ctprep.nifti import read_volume
from ctprep.outputs import check_output
from ctprep.preprocess import preprocess_image
from ctprep.store import StoreLayout
from ctprep.window import decode, encode

Predictor = Callable[[np.ndarray], np.ndarray]  # stored (Z, S, S) float32 [0, 1] -> probabilities (Z, S, S)
CHANNEL_SUFFIX = re.compile(r"_0000$")  # nnU-Net names the (only) CT channel NAME_0000.nii.gz
STAGES = ("read", "preprocess", "network", "invert", "write")
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

    def __post_init__(self) -> None:
        check_inference(self.checkpoint, self.threshold, self.batch_size)


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


def output_name(path: Path) -> str:
    """Output file name for an input scan: nnU-Net's ``NAME_0000.nii.gz`` -> ``NAME.nii.gz``, else unchanged."""
    stem = nifti_stem(path)
    suffix = path.name[len(stem):]
    return CHANNEL_SUFFIX.sub("", stem) + suffix


def plan_outputs(source: Path, output: Path, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file to one file (or into a folder), or every NIfTI in a folder into a folder;
    the whole set is checked (``check_pairs``) before anything is written."""
    source, output = Path(source), Path(output)
    if source.is_dir():
        if nifti_stem(output) is not None:
            raise UsageError(f"{output}: INPUT {source} is a folder, so OUTPUT must be a folder, not a NIfTI file")
        if output.exists() and not output.is_dir():
            raise UsageError(f"{output}: expected an OUTPUT folder, found a file; choose a folder path")
        scans = sorted(p for p in source.iterdir() if p.is_file() and nifti_stem(p) is not None)
        if not scans:
            raise CaseError(f"{source}: expected .nii or .nii.gz scans in this folder, found none; check the path")
        pairs = [(scan, output / output_name(scan)) for scan in scans]
    elif not source.exists():
        raise CaseError(f"{source}: not found; pass a .nii/.nii.gz file or a folder of them")
    elif output.is_dir():
        pairs = [(source, output / output_name(source))]
    elif nifti_stem(output) is None:
        raise UsageError(f"{output}: expected a .nii or .nii.gz output path (or an existing folder)")
    else:
        pairs = [(source, output)]
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
            raise OutputError(f"{dst}: expected one input per output, found two ({first.name} and {src.name}); "
                              "rename or move one of them, or predict them into different OUTPUT folders")
    existing = [dst for _, dst in pairs if os.path.lexists(dst)]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        shown = ", ".join(p.name for p in existing[1:MAX_LISTED])
        also = f" ({shown}{', ...' if len(existing) > MAX_LISTED else ''})" if shown else ""
        raise OutputError(f"{existing[0]}: expected a new output file, found an existing one{more}{also}; "
                          "pass --overwrite to replace them, or choose another OUTPUT")


def _file_key(path: Path) -> tuple[int, int] | Path:
    """What makes two paths one file: (device, inode) when it exists (hard links, case-insensitive names),
    else the resolved path."""
    try:
        info = os.stat(path)
    except OSError:
        return Path(path).resolve()
    return info.st_dev, info.st_ino


def prepare_input(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout) -> tuple[np.ndarray, geometry.CaseGeometry]:
    """The network's input exactly as the store would hold it: preprocess, then the dtype's encode/decode round trip."""
    unit, geom = preprocess_image(hu, affine, layout)
    return decode(encode(unit, layout.dtype)), geom


def write_like(source: Path, data: np.ndarray, destination: Path) -> None:
    """Write ``data`` as NIfTI with ``source``'s header: shape, qform/sform and codes kept; temp file + rename."""
    src = nib.load(str(source))
    header = src.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(src.shape)
    header.set_slope_inter(1.0, 0.0)  # the values written are the values meant (a source's scl_* would rescale)
    header["descrip"] = b"ctstack predict"
    payload = nifti_bytes(header, np.asarray(data).reshape(src.shape))
    if str(destination).endswith(".gz"):
        payload = gzip_fast(payload)
    write_bytes(destination, payload)


def nifti_bytes(header, data: np.ndarray) -> bytes:
    """A single-file NIfTI image: header (and extensions), zero padding to vox_offset, voxels in Fortran order.

    Built directly instead of through nibabel's writer, which costs ~4x the gzip on a 512x512x300 mask;
    a Fortran-contiguous ``data`` (what the GPU path hands over) is written without a transpose copy.
    """
    buffer = io.BytesIO()
    header.set_data_offset(0)  # nibabel then sets the smallest offset after the header and its extensions
    header.write_to(buffer)
    buffer.write(b"\0" * (int(header.get_data_offset()) - buffer.tell()))
    voxels = np.asarray(data, dtype=header.get_data_dtype())
    buffer.write(voxels.tobytes(order="F"))
    return buffer.getvalue()


def gzip_fast(payload: bytes) -> bytes:
    """gzip at level 1: ISA-L when installed (~10x zlib on masks), else zlib."""
    try:
        from isal import igzip
    except ImportError:
        return gzip.compress(payload, compresslevel=1)
    return igzip.compress(payload, compresslevel=1)


@dataclass(frozen=True)
class Backend:
    """Where a scan's stages run: ``prepare`` (HU, affine -> network input, geometry), ``network`` (input ->
    stored probabilities) and ``restore`` (probabilities -> source-grid array to write, lesion voxel count)."""

    prepare: Callable[[np.ndarray, np.ndarray, StoreLayout], tuple[object, geometry.CaseGeometry]]
    network: Callable[[object], object]
    restore: Callable[[object, geometry.CaseGeometry, float, bool], tuple[np.ndarray, int]]


def restore_numpy(probs: np.ndarray, geom: geometry.CaseGeometry, threshold: float,
                  probabilities: bool = False) -> tuple[np.ndarray, int]:
    """Stored (Z, S, S) probabilities -> (source-grid uint8 mask, or float32 probabilities, lesion voxel count);
    the threshold applies on the source grid. `ctmodel evaluate --grid native` scores this same array."""
    source_probs = geometry.inverse(probs, geom)
    mask = (source_probs >= threshold).astype(np.uint8)
    return (source_probs.astype(np.float32) if probabilities else mask), int(mask.sum())


def numpy_backend(predictor: Predictor) -> Backend:
    """Preprocess and invert with ctprep's numpy code on the CPU around any stored-volume ``predictor``."""
    return Backend(prepare=prepare_input, network=predictor, restore=restore_numpy)


def torch_backend(model, device, batch_size: int | None = None, precision: str = "bf16") -> Backend:
    """Every stage after reading on ``device`` (ctmodel.ondevice): one upload of HU, one download of the mask."""
    import torch

    from ctmodel import ondevice
    from ctmodel.device import inference_batch
    from ctmodel.inference import predict_volume

    def sync(tensor):
        if tensor.device.type == "cuda":  # stage timings should be the stage's own, not the next one's
            torch.cuda.synchronize(tensor.device)
        return tensor

    def prepare(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout):
        geom = geometry.describe(affine, hu.shape, layout.size)
        return sync(ondevice.prepare(torch.from_numpy(hu).to(device), geom, layout)), geom

    def network(stored):
        return sync(predict_volume(model, stored, inference_batch(stored.device, batch_size), precision))

    def restore(probs, geom: geometry.CaseGeometry, threshold: float, probabilities: bool) -> tuple[np.ndarray, int]:
        source_probs = ondevice.restore(probs, geom)
        mask = source_probs >= threshold
        lesion_voxels = int(mask.sum())
        written = source_probs if probabilities else mask.to(torch.uint8)
        return written.permute(2, 1, 0).contiguous().cpu().numpy().T, lesion_voxels  # Fortran order, as NIfTI

    return Backend(prepare=prepare, network=network, restore=restore)


def predict_scan(source: Path, destination: Path, predictor: Predictor | Backend, layout: StoreLayout,
                 threshold: float = 0.5, probabilities: bool = False) -> ScanResult:
    """Read, preprocess, predict, invert and write one scan; CaseError when the input is unreadable."""
    if destination.resolve() == Path(source).resolve():
        raise CaseError(f"{source}: the output would overwrite the input; choose another OUTPUT")
    backend = predictor if isinstance(predictor, Backend) else numpy_backend(predictor)
    seconds, clock = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = now - clock, now

    volume = read_volume(source); lap("read")
    stored, geom = backend.prepare(volume.data, volume.affine, layout); lap("preprocess")
    probs = backend.network(stored); lap("network")
    written, lesion_voxels = backend.restore(probs, geom, threshold, probabilities); lap("invert")
    write_like(source, written, destination); lap("write")
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    return ScanResult(Path(source), destination, int(geom.n_slices), lesion_voxels * voxel_ml, seconds)


def predict_paths(source: Path, output: Path, predictor: Predictor | Backend, layout: StoreLayout,
                  threshold: float = 0.5, probabilities: bool = False, progress: bool = True,
                  overwrite: bool = False) -> PredictReport:
    """Predict one file or every scan of a folder; a bad scan fails alone (one line in ``report.failed``).

    Every output is checked before the first is written (``check_pairs``); existing ones need ``overwrite``.
    """
    from ctprep.console import track

    pairs = plan_outputs(source, output, overwrite)
    report = PredictReport()
    items = track(pairs, "predict", unit="scan") if progress else pairs
    for src, dst in items:
        try:
            report.results.append(predict_scan(src, dst, predictor, layout, threshold, probabilities))
        except CtstackError as err:
            report.failed.append(str(err))
    return report


def model_predictor(model, device, batch_size: int | None = None, precision: str = "bf16") -> Predictor:
    """Wrap a 2.5D network as a Predictor: numpy volume in, numpy probabilities out (whole volume on ``device``)."""
    import torch

    from ctmodel.device import inference_batch
    from ctmodel.inference import predict_volume

    def run(volume: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
        return predict_volume(model, tensor, inference_batch(tensor.device, batch_size), precision).cpu().numpy()

    return run


def model_backend(model, device, batch_size: int | None = None, precision: str = "bf16") -> Backend:
    """The backend `ctmodel predict` uses: torch ops on the model's device for every stage after reading (on
    2 CPU cores they also beat the numpy path by ~1.3x; benchmarks/predict.py measures both)."""
    return torch_backend(model, device, batch_size, precision)


def predict(run_dir: Path, source: Path, output: Path, cfg: PredictConfig = PredictConfig(),
            progress: bool = True) -> PredictReport:
    """`ctmodel predict`: load the run's checkpoint and predict ``source`` (file or folder) into ``output``."""
    from ctmodel.checkpoint import load_run
    from ctmodel.device import resolve_device

    plan_outputs(source, output, cfg.overwrite)  # refuse bad paths before loading the model
    device = resolve_device(cfg.device)
    run = load_run(Path(run_dir), cfg.checkpoint, device)
    backend = model_backend(run.model, device, cfg.batch_size, cfg.precision)
    return predict_paths(source, output, backend, run.layout, cfg.threshold, cfg.probabilities, progress,
                         cfg.overwrite)
