"""Demo generator speed: rendering vs. just writing the same volumes, and 1 worker vs. all cores, in one run.

Run: python benchmarks/demo.py [--cases 4] [--size 512] [--workers N] [--difficulty easy|realistic]

(w)  baseline: nibabel writes the already-rendered int16 volumes and masks (nib.save, gzip level 1);
(r)  rendering the same cases (anatomy, vessels, lesions, noise) in memory;
(s)  ctprep's own writer for them (encode + gzip level 1 with a fixed time stamp, atomic rename);
(1)  make_demo with 1 worker, (n) with all cores: cases/s and the speed-up;
(e)  with --difficulty realistic: rendering the same cases easy, the baseline of the realistic extras' cost.
Goal: rendering costs no more than writing (r <= w), and (n) scales with cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib

from ctprep.demo import DemoConfig, case_affine, encode_hu, make_demo, storage_of
from ctprep.demo.phantom import make_phantom
from ctprep.demo.writer import _orient, _save


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--difficulty", choices=("easy", "realistic"), default="easy")
    return parser.parse_args()


def split_costs(cfg: DemoConfig, work: Path) -> tuple[float, float, float, int]:
    """Seconds to render, to write with ctprep, to write with nib.save; and the slices rendered."""
    render = ours = baseline = 0.0
    slices = 0
    for index in range(cfg.cases):
        start = time.perf_counter()
        phantom = make_phantom(cfg.seed, index, cfg.size, cfg.max_slices, cfg.difficulty)
        render += time.perf_counter() - start
        slices += phantom.patient.n_slices
        storage = storage_of(cfg.seed, index)
        affine = case_affine(phantom, storage.lps)
        start = time.perf_counter()
        stored, inter = encode_hu(phantom, storage)
        _save(work / f"{index}_ct.nii.gz", _orient(stored, storage.lps), affine, inter)
        _save(work / f"{index}_seg.nii.gz", _orient(phantom.mask, storage.lps), affine)
        ours += time.perf_counter() - start
        start = time.perf_counter()
        nib.save(nib.Nifti1Image(_orient(phantom.hu, storage.lps), affine), str(work / f"{index}_b_ct.nii.gz"))
        nib.save(nib.Nifti1Image(_orient(phantom.mask, storage.lps), affine), str(work / f"{index}_b_seg.nii.gz"))
        baseline += time.perf_counter() - start
    return render, ours, baseline, slices


def render_seconds(cfg: DemoConfig) -> float:
    """Seconds to render every case of ``cfg`` in memory."""
    start = time.perf_counter()
    for index in range(cfg.cases):
        make_phantom(cfg.seed, index, cfg.size, cfg.max_slices, cfg.difficulty)
    return time.perf_counter() - start


def run_set(cfg: DemoConfig, work: Path) -> float:
    """Wall seconds of make_demo into a fresh folder."""
    out = work / f"set{cfg.workers}"
    start = time.perf_counter()
    make_demo(out, cfg)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def main() -> None:
    """Measure and print every figure with its baseline."""
    args = parse_args()
    cfg = DemoConfig(cases=args.cases, size=args.size, workers=1, difficulty=args.difficulty)
    with tempfile.TemporaryDirectory(prefix="ctstack-demo-bench-") as tmp:
        work = Path(tmp)
        render, ours, baseline, slices = split_costs(cfg, work)
        serial = run_set(cfg, work)
        parallel = run_set(DemoConfig(cases=args.cases, size=args.size, workers=args.workers,
                                      difficulty=args.difficulty), work)
    easy = render_seconds(DemoConfig(cases=args.cases, size=args.size)) if args.difficulty != "easy" else None
    print(f"{args.cases} cases, {args.size}x{args.size}, {slices} slices, difficulty {args.difficulty}")
    print(f"(w) baseline nib.save of the rendered volumes: {baseline:6.2f} s  ({slices / baseline:7.1f} slices/s)")
    print(f"(r) rendering:                                  {render:6.2f} s  ({slices / render:7.1f} slices/s)"
          f"  = {render / baseline:.2f} x (w)")
    print(f"(s) ctprep writer (encode + gzip + rename):     {ours:6.2f} s  = {ours / baseline:.2f} x (w)")
    print(f"(1) make_demo, 1 worker:                        {serial:6.2f} s  ({args.cases / serial:.2f} cases/s)")
    print(f"(n) make_demo, {args.workers} workers:                       {parallel:6.2f} s  "
          f"({args.cases / parallel:.2f} cases/s)  speed-up {serial / parallel:.2f} x")
    if easy is not None:
        print(f"(e) rendering the same cases easy:              {easy:6.2f} s  -> realistic = {render / easy:.2f} x (e)"
              " (thick-slice patients render fewer slices)")


if __name__ == "__main__":
    main()
