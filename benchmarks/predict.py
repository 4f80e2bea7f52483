"""Seconds per full-size scan for `ctmodel predict`, split into read / preprocess / network / invert / write.

Run: python benchmarks/predict.py --slices 120 --threads 2 [--device cpu|cuda]

The scan is a synthetic 512x512xZ chest CT written by ctprep's demo generator (int16 .nii.gz, as scanners
ship); the network is the default-width dual encoder with RANDOM weights (timing does not depend on them).
Baselines measured in the same run: reading the file alone (the floor of any NIfTI tool), and the network
run one slice at a time (what a per-slice loop costs) against predict's batched pass.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctmodel.config import ModelConfig
from ctmodel.device import resolve_device
from ctmodel.inference import predict_volume
from ctmodel.nets import build_model, count_parameters
from ctmodel.predict import STAGES, model_predictor, predict_scan, prepare_input
from ctprep.demo import DemoConfig, write_case
from ctprep.nifti import read_volume
from ctprep.store import StoreLayout


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120, help="axial slices Z of the 512x512xZ scan")
    parser.add_argument("--size", type=int, default=256, help="stored in-plane size S the network sees")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="scans to time; with 2 or more the first is a warm-up")
    parser.add_argument("--unbatched-slices", type=int, default=8, help="slices timed one at a time (baseline)")
    return parser.parse_args()


def make_scan(folder: Path, slices: int) -> Path:
    """One synthetic 512x512xZ demo scan; returns its image path."""
    row = write_case(folder, DemoConfig(cases=1, size=512, max_slices=slices, workers=1), 0)
    return Path(row["image"])


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
    device = resolve_device(args.device)
    layout = StoreLayout(size=args.size)
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device).eval()
    predictor = model_predictor(model, device, args.batch_size, "bf16")
    with tempfile.TemporaryDirectory() as tmp:
        scan = make_scan(Path(tmp) / "raw", args.slices)
        shape = read_volume(scan).data.shape
        runs = [predict_scan(scan, Path(tmp) / f"out{i}.nii.gz", predictor, layout) for i in range(args.repeats)]
        start = time.perf_counter()
        volume = read_volume(scan)
        read_alone = time.perf_counter() - start
        stored, _ = prepare_input(volume.data, volume.affine, layout)
    unbatched = time_unbatched(model, torch.from_numpy(stored).to(device), args.unbatched_slices)
    report(args, device, shape, count_parameters(model), runs, read_alone, unbatched)


def report(args, device, shape, parameters, runs, read_alone, unbatched) -> None:
    """Print the figures: per stage (best of the timed scans after the first when there are several)."""
    timed = runs[1:] if len(runs) > 1 else runs
    best = min(timed, key=lambda r: r.total_seconds)
    n_slices = best.n_slices
    print(f"scan {shape} (512x512x{n_slices} source voxels), stored {n_slices}x{args.size}x{args.size}, "
          f"device {device}, {args.threads} CPU threads, dual-encoder {parameters:,} params (random weights)")
    print(f"{'stage':<12}{'seconds':>10}{'share':>8}")
    for stage in STAGES:
        print(f"{stage:<12}{best.seconds[stage]:>10.3f}{best.seconds[stage] / best.total_seconds:>8.1%}")
    print(f"{'total':<12}{best.total_seconds:>10.3f}   ({best.total_seconds / n_slices * 1000:.1f} ms/slice)")
    print("baselines (same run):")
    print(f"  read the NIfTI alone: {read_alone:.3f} s -> predict end to end = "
          f"{best.total_seconds / read_alone:.1f}x the read")
    batched = best.seconds["network"] / n_slices
    print(f"  network one slice at a time: {unbatched * 1000:.1f} ms/slice vs batched {batched * 1000:.1f} ms/slice "
          f"(batch {args.batch_size}) -> batching {unbatched / batched:.2f}x faster")
    print(f"  scans timed: {len(timed)} (of {len(runs)}); total seconds per scan: "
          f"{', '.join(f'{r.total_seconds:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
