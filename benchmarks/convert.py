"""Convert speed vs. the cost of just loading the NIfTI files, measured in one run on full-size demo cases.

Run: python benchmarks/convert.py [--raw DIR] [--cases 6] [--max-slices 64] [--workers N] [--repeat 3]

(a)  nibabel loads every case into memory (image get_fdata float32 + mask), the floor a Dataset pays per epoch;
(a') the same files through ctprep's reader (ISA-L gunzip when `isal` is installed, voxels viewed in place,
     float32 scaling);
(b)  `convert` with 1 worker, and (b0) the same with ISA-L switched off (stock zlib through nibabel);
(b-) `convert` with 1 worker and os.fsync made a no-op: b / b- is the cost of durable writes (ctprep.atomic fsyncs
     each case's files and folders before renaming it into cases/, and the folders after); during (b) every
     os.fsync call is timed too, so their total is reported beside the ratio;
(c)  `convert` with all cores.
Dask (when `distributed` is installed; --skip-dask leaves it out):
(d)  `convert --scheduler local:W` with W = --workers, end to end (starting the LocalCluster included);
(d') the same on a LocalCluster of W processes already running (tcp://): d' / c is Dask's overhead per run
     against the fork-server pool with as many processes;
(e)  cases/s on running LocalClusters of 1, 2 and 4 worker processes (scaling; ideal 1 : 2 : 4 with 4 cores).
Goal: b <= 1.3 a, c scaling with cores.
With --dicom (only these runs; needs ctstack[dicom]): the same demo cases written both as .nii.gz and as DICOM
series folders with a SEG (`ctprep demo --format dicom`, same seed: the same volumes), then
(f)  ctprep's NIfTI reader, image f32 + mask, against (g) ctprep's DICOM reader (series + SEG) on the same volumes;
(h)  `convert`, 1 worker, of the NIfTI set against (i) of the DICOM set.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from ctprep import nifti
from ctprep.convert import ConvertConfig, convert
from ctprep.store import disk_bytes
from ctprep.discover import find_cases


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, help="raw folder to convert (default: a fresh demo set)")
    parser.add_argument("--cases", type=int, default=6, help="demo cases to make when --raw is not given")
    parser.add_argument("--max-slices", type=int, default=64, help="slice cap of the demo cases (512x512 each)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for run (c)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the best round (shared CPUs)")
    parser.add_argument("--skip-dask", action="store_true", help="leave out the Dask runs (d), (d') and (e)")
    parser.add_argument("--dicom", action="store_true", help="only the DICOM-series vs NIfTI runs (f)-(i)")
    return parser.parse_args()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load_all(cases, isal: bool) -> None:
    """Load every image (float32 HU) and mask into memory, as a training Dataset would: with nibabel alone, or
    (``isal``) with ctprep's reader (ISA-L gunzip, voxels viewed in place, float32 scaling)."""
    for case in cases:
        if isal:
            volume = nifti.read_volume(case.image_path)
            if case.mask_path is not None:
                nifti.read_mask(case.mask_path, volume)
            continue
        nib.load(case.image_path).get_fdata(dtype=np.float32)
        if case.mask_path is not None:
            np.asanyarray(nib.load(case.mask_path).dataobj)


def source_sizes(cases) -> tuple[int, int, int]:
    """(compressed bytes, uncompressed voxel bytes, slices) of every image and mask."""
    compressed = uncompressed = slices = 0
    for case in cases:
        for path in (case.image_path, case.mask_path):
            if path is None:
                continue
            header = nib.load(path).header
            compressed += path.stat().st_size
            uncompressed += int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        slices += nifti.load_header(case.image_path)[1][2]
    return compressed, uncompressed, slices


@contextmanager
def fsync_timed(enabled: bool) -> Iterator[list[float]]:
    """Yield a list that gets the seconds of every os.fsync call made in this process; ``enabled=False`` skips the
    calls (seconds 0). Benchmark-only: the library has no switch for this."""
    real = os.fsync
    seconds: list[float] = []

    def fsync(fd: int) -> None:
        start = time.perf_counter()
        if enabled:
            real(fd)
        seconds.append(time.perf_counter() - start)

    os.fsync = fsync
    try:
        yield seconds
    finally:
        os.fsync = real


def run_convert(raw: Path, store: Path, workers: int, size: int, scheduler: str | None = None) -> float:
    """Seconds of one convert into a fresh store (on Dask when ``scheduler`` is given)."""
    shutil.rmtree(store, ignore_errors=True)
    cfg = ConvertConfig(size=size, workers=workers, scheduler=scheduler)
    return timed(lambda: convert(raw, store, cfg, progress=False))


def main() -> None:
    args = parse_args()
    if args.dicom:
        dicom_main(args)
        return
    with tempfile.TemporaryDirectory(prefix="ctprep-bench-") as tmp:
        raw = args.raw or make_raw(Path(tmp) / "raw", args.cases, args.max_slices)
        cases = find_cases(raw).cases
        compressed, uncompressed, slices = source_sizes(cases)
        load_all(cases, isal=False)  # warm the page cache so every run reads from memory alike
        isal = nifti.isal_zlib
        best: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved rounds, best of each: robust to other load on the machine
            for name, seconds in one_round(cases, raw, Path(tmp), args, isal).items():
                best[name] = min(best.get(name, float("inf")), seconds)
        a, a_isal, b0, b, c = (best[k] for k in ("a", "a_isal", "b0", "b", "c"))
        store_bytes = disk_bytes(Path(tmp) / "b.zarr")
        report(args, len(cases), slices, compressed, uncompressed, store_bytes, a, a_isal, b0, b, c)
        report_fsync(best, Path(tmp))
        if not args.skip_dask:
            report_dask(dask_rounds(raw, Path(tmp), args), len(cases), c, args.workers)


def one_round(cases, raw: Path, tmp: Path, args, isal) -> dict[str, float]:
    """One timing of every run, in a fixed order."""
    times = {"a": timed(lambda: load_all(cases, isal=False)),
             "a_isal": timed(lambda: load_all(cases, isal=True)) if isal is not None else float("nan")}
    nifti.isal_zlib = None
    try:
        times["b0"] = run_convert(raw, tmp / "b0.zarr", 1, args.size)
    finally:
        nifti.isal_zlib = isal
    with fsync_timed(enabled=True) as synced:
        times["b"] = run_convert(raw, tmp / "b.zarr", 1, args.size)
    times["fsync_calls"], times["fsync_s"] = len(synced), sum(synced)  # best round: the fewest seconds in fsync
    with fsync_timed(enabled=False):
        times["b_nosync"] = run_convert(raw, tmp / "b_nosync.zarr", 1, args.size)
    times["c"] = run_convert(raw, tmp / "c.zarr", args.workers, args.size)
    return times


def dask_rounds(raw: Path, tmp: Path, args) -> dict[str, float]:
    """Best-of-``repeat`` seconds of the Dask runs: (d) local:W end to end, (d') and (e) on running clusters."""
    from distributed import LocalCluster

    from ctprep.workers import pool_environment

    best: dict[str, float] = {}
    for _ in range(args.repeat):
        best["d"] = min(best.get("d", float("inf")),
                        run_convert(raw, tmp / "d.zarr", 1, args.size, f"local:{args.workers}"))
    for workers in sorted({1, 2, 4, args.workers}):
        with pool_environment(), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                              host="127.0.0.1", dashboard_address=None) as cluster:
            seconds = [run_convert(raw, tmp / "e.zarr", 1, args.size, cluster.scheduler_address)
                       for _ in range(args.repeat)]
        best[f"e{workers}"] = min(seconds)
    return best


def report_dask(best: dict[str, float], n_cases: int, c: float, workers: int) -> None:
    print(f"\n{'Dask run':44s} {'s':>7s} {'cases/s':>9s}")
    rows = [(f"(c)  fork-server pool, {workers} workers", c),
            (f"(d)  --scheduler local:{workers} (cluster start incl.)", best["d"]),
            (f"(d') running LocalCluster, {workers} workers", best[f"e{workers}"]),
            *((f"(e)  running LocalCluster, {w} workers", best[f"e{w}"]) for w in (1, 2, 4))]
    for name, seconds in rows:
        print(f"{name:44s} {seconds:7.2f} {n_cases / seconds:9.2f}")
    print(f"d' / c  = {best[f'e{workers}'] / c:.2f}   (Dask overhead vs. the fork-server pool, same processes)")
    print(f"d / c   = {best['d'] / c:.2f}   (with starting the LocalCluster)")
    print(f"e1 / e2 = {best['e1'] / best['e2']:.2f}x, e1 / e4 = {best['e1'] / best['e4']:.2f}x  (ideal 2x, 4x; "
          f"cores {os.cpu_count()})")


def make_raw(out: Path, cases: int, max_slices: int, format: str = "nifti") -> Path:
    from ctprep.demo import DemoConfig, make_demo

    cfg = DemoConfig(cases=cases, seed=0, size=512, max_slices=max_slices, format=format)
    seconds = timed(lambda: make_demo(out, cfg))
    print(f"made {cases} demo cases (512x512, <= {max_slices} slices, {format}) in {seconds:.1f} s")
    return out


def dicom_main(args) -> None:
    """(f)-(i): the same volumes read and converted from NIfTI and from DICOM series, best of ``repeat`` rounds."""
    from ctprep.readers import read_case_mask, read_image

    def read_all(cases) -> None:
        for case in cases:
            image = read_image(case.image_path)
            for path in case.masks.values():
                read_case_mask(path, image)

    with tempfile.TemporaryDirectory(prefix="ctprep-bench-") as tmp:
        raws = {fmt: make_raw(Path(tmp) / fmt, args.cases, args.max_slices, fmt) for fmt in ("nifti", "dicom")}
        cases = {fmt: find_cases(raw).cases for fmt, raw in raws.items()}
        slices = source_sizes(cases["nifti"])[2]
        best: dict[str, float] = {}
        for fmt in raws:
            read_all(cases[fmt])  # warm the page cache
        for _ in range(args.repeat):
            for fmt, raw in raws.items():
                best[f"read {fmt}"] = min(best.get(f"read {fmt}", float("inf")), timed(lambda: read_all(cases[fmt])))
                seconds = run_convert(raw, Path(tmp) / f"{fmt}.zarr", 1, args.size)
                best[f"convert {fmt}"] = min(best.get(f"convert {fmt}", float("inf")), seconds)
    print(f"\n{len(cases['nifti'])} cases, {slices} slices of 512x512, the same volumes in both formats")
    print(f"{'run':48s} {'s':>7s} {'slices/s':>9s}")
    rows = [("(f)  NIfTI reader, image f32 + mask", best["read nifti"]),
            ("(g)  DICOM reader, series f32 + SEG", best["read dicom"]),
            ("(h)  convert NIfTI set, 1 worker", best["convert nifti"]),
            ("(i)  convert DICOM set, 1 worker", best["convert dicom"])]
    for name, seconds in rows:
        print(f"{name:48s} {seconds:7.2f} {slices / seconds:9.1f}")
    print(f"\ng / f = {best['read dicom'] / best['read nifti']:.2f}   (DICOM-series read vs NIfTI read)")
    print(f"i / h = {best['convert dicom'] / best['convert nifti']:.2f}   (convert from DICOM vs from NIfTI)")


def report(args, n_cases, slices, compressed, uncompressed, store_bytes, a, a_isal, b0, b, c) -> None:
    mb = 1e6
    print(f"\n{n_cases} cases, {slices} slices, source {compressed / mb:.0f} MB gzip / {uncompressed / mb:.0f} MB "
          f"raw voxels; store {store_bytes / mb:.1f} MB at {args.size}x{args.size}; cores {os.cpu_count()}")
    print(f"{'run':44s} {'s':>7s} {'slices/s':>9s} {'MB/s gz':>8s} {'MB/s raw':>9s}")
    rows = [("(a)  nibabel load, image f32 + mask", a), ("(a') ctprep reader (ISA-L), image f32 + mask", a_isal),
            ("(b0) convert, 1 worker, stock zlib", b0), ("(b)  convert, 1 worker", b),
            (f"(c)  convert, {args.workers} workers", c)]
    for name, seconds in rows:
        print(f"{name:44s} {seconds:7.2f} {slices / seconds:9.1f} {compressed / mb / seconds:8.1f} "
              f"{uncompressed / mb / seconds:9.1f}")
    print(f"\nb / a   = {b / a:.2f}   (goal <= 1.3: convert costs little more than loading)")
    print(f"b0 / a  = {b0 / a:.2f}   (without ISA-L)")
    print(f"b / a'  = {b / a_isal:.2f}   (vs. loading through the same fast gunzip)")
    print(f"a / a'  = {a / a_isal:.2f}x  (ISA-L gunzip speed-up of the load)")
    print(f"b / c   = {b / c:.2f}x  with {args.workers} workers (ideal {args.workers}x)")
    print(f"a / c   = {a / c:.2f}x  (all-core convert vs. single-threaded nibabel load)")


def report_fsync(best: dict[str, float], tmp: Path) -> None:
    b, b_nosync = best["b"], best["b_nosync"]
    print(f"\n{'(b)  convert, 1 worker (fsync on)':44s} {b:7.2f} s   {best['fsync_calls']:.0f} fsync calls, "
          f"{best['fsync_s']:.3f} s in fsync ({best['fsync_s'] / b:.1%} of b)")
    print(f"{'(b-) convert, 1 worker, fsync off':44s} {b_nosync:7.2f} s")
    print(f"b / b-  = {b / b_nosync:.3f}   (cost of fsync on convert; stores under {tmp})")


if __name__ == "__main__":
    main()
