"""Seconds per full-size scan for `ctmodel predict`, split into read / preprocess / network / invert / write.

Run: python benchmarks/predict.py --slices 300 --threads 2 [--device cpu|cuda] [--repeats 3]

The scan is a synthetic 512x512xZ chest CT written by ctprep's demo generator (int16 .nii.gz, as scanners
ship; demo cases longer than the generator's 200 slices are the case mirrored along z); the network is the
default-width dual encoder with RANDOM weights (timing does not depend on them).
Measured in the same run: both backends of predict (ctprep's numpy preprocessing on the CPU, and the torch
copy that keeps every stage on the device, which `ctmodel predict` uses on a GPU), reading the file alone
(the floor of any NIfTI tool), and the network run one slice at a time against predict's batched pass.

With --dicom-seg (only these runs; needs ctstack[dicom]): the same scan also written as a DICOM series, then
predicted NIfTI -> NIfTI, DICOM -> NIfTI, DICOM -> binary SEG and DICOM -> fractional SEG (RLE Lossless, and
uncompressed as its baseline: "SEG frac raw") with a per-voxel
threshold as the "network" (so the figures are the reading and writing that the format changes), best of
--repeats; printed per stage with the ratios to NIfTI -> NIfTI.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ctmodel.backends import model_predictor, numpy_backend, torch_backend
from ctmodel.config import ModelConfig
from ctmodel.device import inference_batch, resolve_device
from ctmodel.inference import predict_volume
from ctmodel.nets import build_model, count_parameters
from ctmodel.predict import STAGES, predict_scan
from ctprep.demo import DemoConfig, write_demo_case
from ctprep.nifti import read_volume
from ctprep.preprocess import prepare_input
from ctprep.store import StoreLayout


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="axial slices Z of the 512x512xZ scan")
    parser.add_argument("--size", type=int, default=256, help="stored in-plane size S the network sees")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: predict's, "
                        "32 on a GPU, 4 on the CPU)")
    parser.add_argument("--repeats", type=int, default=1, help="scans to time; with 2 or more the first is a warm-up")
    parser.add_argument("--unbatched-slices", type=int, default=8, help="slices timed one at a time (baseline)")
    parser.add_argument("--dicom-seg", action="store_true", help="only the DICOM series / DICOM SEG runs")
    return parser.parse_args()


def make_scan(folder: Path, slices: int) -> Path:
    """One synthetic 512x512xZ demo scan of exactly ``slices`` slices; returns its image path."""
    row = write_demo_case(folder, DemoConfig(cases=1, size=512, max_slices=slices, workers=1), 0)
    image = nib.load(row["image"])
    if image.shape[2] == slices:
        return Path(row["image"])
    hu = image.get_fdata(dtype=np.float32)
    mirrored = np.concatenate([hu, hu[:, :, ::-1]] * (-(-slices // (2 * hu.shape[2]))), axis=2)[:, :, :slices]
    longer = nib.Nifti1Image(mirrored, image.affine, image.header)
    longer.header.set_data_dtype(np.int16)
    path = folder / f"scan_{slices}.nii.gz"
    nib.save(longer, str(path))
    return path


def time_unbatched(model: torch.nn.Module, volume: torch.Tensor, n: int) -> float:
    """Seconds per slice when the network is run on one 2.5D stack at a time."""
    subset = volume[: max(n, 1)]
    predict_volume(model, subset[:1], batch_size=1, precision="bf16")  # warm-up
    start = time.perf_counter()
    predict_volume(model, subset, batch_size=1, precision="bf16")
    synchronize(volume.device)
    return (time.perf_counter() - start) / subset.shape[0]


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Run the benchmark and print per-stage seconds and the same-run baselines."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.dicom_seg:
        dicom_seg_main(args)
        return
    device = resolve_device(args.device)
    layout = StoreLayout(size=args.size)
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device).eval()
    backends = {"numpy (CPU)": numpy_backend(model_predictor(model, device, args.batch_size, "bf16")),
                f"torch ({device.type})": torch_backend(model, device, args.batch_size, "bf16")}
    with tempfile.TemporaryDirectory() as tmp:
        scan = make_scan(Path(tmp) / "raw", args.slices)
        shape = read_volume(scan).data.shape
        runs = {name: [predict_scan(scan, Path(tmp) / f"out{i}.nii.gz", backend, layout) for i in range(args.repeats)]
                for name, backend in backends.items()}
        start = time.perf_counter()
        volume = read_volume(scan)
        read_alone = time.perf_counter() - start
        stored, _ = prepare_input(volume.data, volume.affine, layout)
    unbatched = time_unbatched(model, torch.from_numpy(stored).to(device), args.unbatched_slices)
    report(args, device, shape, count_parameters(model), runs, read_alone, unbatched)


def best_run(runs: list) -> object:
    """The fastest scan after the first (a warm-up) when several were timed."""
    timed = runs[1:] if len(runs) > 1 else runs
    return min(timed, key=lambda r: r.total_seconds)


def print_stages(best: dict, extra: dict[str, list[float]]) -> None:
    """A table of seconds per stage (rows) and run (columns), the totals, and ``extra`` rows."""
    print(f"{'stage':<12}" + "".join(f"{name:>19}" for name in best))
    for stage in STAGES:
        print(f"{stage:<12}" + "".join(f"{r.seconds[stage]:>19.3f}" for r in best.values()))
    print(f"{'total s':<12}" + "".join(f"{r.total_seconds:>19.3f}" for r in best.values()))
    for label, values in extra.items():
        print(f"{label:<12}" + "".join(f"{v:>19.2f}" for v in values))


def report(args, device, shape, parameters, runs: dict, read_alone, unbatched) -> None:
    """Print the figures: per stage and backend (best of the timed scans after the first when there are several)."""
    best = {name: best_run(scans) for name, scans in runs.items()}
    n_slices = next(iter(best.values())).n_slices
    print(f"scan {shape} (512x512x{n_slices} source voxels), stored {n_slices}x{args.size}x{args.size}, "
          f"device {device}, {args.threads} CPU threads, dual-encoder {parameters:,} params (random weights)")
    print_stages(best, {"ms/slice": [r.total_seconds / n_slices * 1000 for r in best.values()]})
    (name_a, a), (name_b, b) = best.items()
    print("baselines (same run):")
    print(f"  {name_b} vs {name_a}: {a.total_seconds / b.total_seconds:.2f}x faster end to end")
    fastest = min(best.values(), key=lambda r: r.total_seconds)
    print(f"  read the NIfTI alone: {read_alone:.3f} s -> fastest predict end to end = "
          f"{fastest.total_seconds / read_alone:.1f}x the read")
    batched = fastest.seconds["network"] / n_slices
    print(f"  network one slice at a time: {unbatched * 1000:.1f} ms/slice vs batched {batched * 1000:.1f} ms/slice "
          f"(batch {inference_batch(device, args.batch_size)}) -> batching {unbatched / batched:.2f}x faster")
    for name, scans in runs.items():
        print(f"  {name}: seconds per scan, in order: {', '.join(f'{r.total_seconds:.2f}' for r in scans)}")


def uncompressed_fractional(run: tuple, tmp: Path, backend, layout: StoreLayout, args) -> object:
    """The fractional SEG run written uncompressed (the baseline of its RLE Lossless frames)."""
    from ctmodel import dicom_seg

    source, name, out = run
    compressed, dicom_seg.FRACTIONAL_SYNTAX = dicom_seg.FRACTIONAL_SYNTAX, dicom_seg.BINARY_SYNTAX
    try:
        return best_run([predict_scan(source, tmp / name, backend, layout, out=out)
                         for _ in range(max(args.repeats, 2))])
    finally:
        dicom_seg.FRACTIONAL_SYNTAX = compressed


def dicom_seg_main(args) -> None:
    """Seconds per stage for NIfTI and DICOM inputs and NIfTI, binary-SEG and fractional-SEG outputs."""
    from ctmodel.scans import OutputFormat
    from ctprep.demo.dicom_writer import SeriesSpec, write_series

    layout = StoreLayout(size=args.size)
    backend = numpy_backend(lambda stored: (np.asarray(stored, dtype=np.float32) > 0.5).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        scan = make_scan(Path(tmp) / "raw", args.slices)
        volume = read_volume(scan)
        write_series(Path(tmp) / "series", np.rint(volume.data), volume.affine, SeriesSpec(("bench",)))
        runs = {"NIfTI -> NIfTI": (scan, "out.nii.gz", OutputFormat()),
                "DICOM -> NIfTI": (Path(tmp) / "series", "d.nii.gz", OutputFormat()),
                "DICOM -> SEG": (Path(tmp) / "series", "b.dcm", OutputFormat("dicom-seg")),
                "DICOM -> SEG frac": (Path(tmp) / "series", "f.dcm", OutputFormat("dicom-seg", probabilities=True))}
        best = {name: best_run([predict_scan(src, Path(tmp) / name_out, backend, layout, out=out)
                                for _ in range(max(args.repeats, 2))])
                for name, (src, name_out, out) in runs.items()}
        runs["SEG frac raw"] = (Path(tmp) / "series", "r.dcm", runs["DICOM -> SEG frac"][2])
        best["SEG frac raw"] = uncompressed_fractional(runs["SEG frac raw"], Path(tmp), backend, layout, args)
        sizes = {name: (Path(tmp) / name_out).stat().st_size / 1e6 for name, (_, name_out, _) in runs.items()}
    print(f"scan 512x512x{args.slices}, stored at {args.size}; per-voxel threshold as the network; best of "
          f"{max(args.repeats, 2) - 1} after a warm-up")
    print_stages(best, {"output MB": [sizes[name] for name in best]})
    base = best["NIfTI -> NIfTI"]
    print("baselines (same run): ratios to NIfTI -> NIfTI")
    for name, r in best.items():
        print(f"  {name:<18} read {r.seconds['read'] / base.seconds['read']:.2f}x  write "
              f"{r.seconds['write'] / base.seconds['write']:.2f}x  total {r.total_seconds / base.total_seconds:.2f}x")


if __name__ == "__main__":
    main()
