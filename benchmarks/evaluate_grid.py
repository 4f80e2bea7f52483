"""Seconds per case of `ctmodel evaluate` on the native grid (the default) against the store grid (`--grid store`).

Run: python benchmarks/evaluate_grid.py --cases 3 --demo-size 512 --slices 60 --size 256 --threads 2

Demo cases (ctprep demo, COVID-19-20 layout, int16 .nii.gz) are converted into a store. Per case, the same run
times: the network (default-width dual encoder, RANDOM weights, run once: it is the same for both grids),
store-grid scoring (the baseline: store reads, threshold, 3-D metrics on the (Z, S, S) arrays) and native-grid
scoring (the same plus fingerprint and read of the source mask, inverse to the source grid, 3-D metrics at the
source spacing). Scoring is timed on the stored true mask given as the prediction, so that surfaces are
lesion-sized as with a trained model (a random network's blobs would time something no one evaluates); its
store-grid Dice is 1 and its native Dice shows what the resize alone costs on the source grid.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctmodel.backends import model_predictor
from ctmodel.config import ModelConfig
from ctmodel.evaluate import evaluate_case
from ctmodel.nets import build_model
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.store import SliceStore
from timing import add_demo_options


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_options(parser, cases=3, demo_size=512, slices=60, size=256, slices_flag="--slices")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def timed(fn):
    """(result, seconds) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def score_case(store: SliceStore, case_id: str, predictor) -> dict:
    """Seconds of the network and of scoring on each grid for one case, and the two Dice values."""
    _, network = timed(lambda: predictor(store.read_image(case_id)))
    truth = store.read_mask(case_id).astype(np.float32)
    cached = lambda volume: truth  # noqa: E731 - a lesion-sized prediction, the same for both grids
    store_result, store_s = timed(lambda: evaluate_case(store, case_id, cached, 1.0, 0.5, "store"))
    native_result, native_s = timed(lambda: evaluate_case(store, case_id, cached, 1.0, 0.5, "native"))
    assert native_result.grid == "native", native_result.warning
    return {"case": case_id, "network": network, "store": store_s, "native": native_s,
            "dice_store": store_result.metrics.dice, "dice_native": native_result.metrics.dice,
            "source": store.geometry(case_id).source_shape}


def main() -> None:
    """Build the demo store, score every case on both grids, print the figures and the same-run baseline."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = model_predictor(build_model(ModelConfig()).eval(), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        raw, store_path = Path(tmp) / "raw", Path(tmp) / "store.zarr"
        make_demo(raw, DemoConfig(cases=args.cases, size=args.demo_size, max_slices=args.slices, workers=1))
        convert(raw, store_path, ConvertConfig(size=args.size, workers=1), progress=False)
        store = SliceStore.open(store_path)
        rows = [score_case(store, case_id, predictor) for case_id in store.case_ids()]
    report(args, rows)


def report(args, rows: list[dict]) -> None:
    """Per-case seconds and the mean native/store ratios (scoring alone and whole evaluate per case)."""
    print(f"{len(rows)} demo cases, source {args.demo_size}x{args.demo_size}x<={args.slices}, stored S={args.size}, "
          f"{args.threads} CPU threads, dual-encoder (random weights)")
    print(f"{'case':<10}{'source shape':>18}{'network s':>11}{'store s':>10}{'native s':>10}"
          f"{'Dice store':>12}{'Dice native':>12}")
    for r in rows:
        print(f"{r['case']:<10}{str(r['source']):>18}{r['network']:>11.2f}{r['store']:>10.2f}{r['native']:>10.2f}"
              f"{r['dice_store']:>12.4f}{r['dice_native']:>12.4f}")
    network, store, native = (float(np.mean([r[k] for r in rows])) for k in ("network", "store", "native"))
    print(f"mean per case: network {network:.2f} s, scoring store {store:.2f} s, native {native:.2f} s")
    print(f"baseline (same run, store grid): native scoring {native / store:.2f}x the store grid's; "
          f"evaluate per case {network + native:.2f} s native vs {network + store:.2f} s store "
          f"({(network + native) / (network + store):.2f}x)")


if __name__ == "__main__":
    main()
