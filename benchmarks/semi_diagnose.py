"""Why did a pseudo-label arm of benchmarks/semi.py do what it did? Two measurements on its output folder, against
the unlabeled scans' true masks (the demo generator draws each scan from its own index, so a demo written with
every scan labelled holds the very same images, checked byte for byte, with their masks):

  quality  per L, seed and pseudo arm: Dice, recall and precision of the stored pseudo-labels against the truth
           over all unlabeled scans (store grid), and the pseudo-lesion slices against the true lesion slices
  oracle   the pseudo-1 arm trained with the true masks as pseudo-labels (same plan rule, same budget): whether
           the pseudo path learns at all when its labels are right

Run: PYTHONPATH=. python benchmarks/semi_diagnose.py --quick --out benchmarks/out/semi [--oracle-seeds 1]
(with the same size options as the benchmarks/semi.py run it reads). Writes OUT/diagnose.md.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import semi  # noqa: E402  (the benchmark this one reads)

from ctmodel.compare_stats import markdown_table  # noqa: E402
from ctmodel.config import ModelConfig  # noqa: E402
from ctmodel.pseudolabel import make_record, rebuild_index  # noqa: E402
from ctmodel.runfolder import SUMMARY_FILE  # noqa: E402
from ctmodel.train import train  # noqa: E402
from ctprep.atomic import write_text  # noqa: E402
from ctprep.console import make_console, print_table  # noqa: E402
from ctprep.convert import ConvertConfig, convert  # noqa: E402
from ctprep.demo import DemoConfig, make_demo  # noqa: E402
from ctprep.errors import CtstackError, UsageError  # noqa: E402
from ctprep.lock import store_lock  # noqa: E402
from ctprep.pseudo import write_pseudo  # noqa: E402
from ctprep.store import SliceStore  # noqa: E402

PSEUDO_ARMS = ("pseudo-1", "pseudo-2", "pseudo-natural")
QUALITY_COLUMNS = ("labelled", "seed", "arm", "pseudo Dice", "recall", "precision", "pseudo-lesion slices",
                   "true lesion slices", "case confidence range", "Spearman(confidence, case Dice)")
ORACLE_COLUMNS = ("labelled", "seed", "supervised", "pseudo-1", "pseudo-oracle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """semi.py's options plus --oracle-seeds (0: quality only)."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--oracle-seeds", type=int, default=1)
    mine, rest = own.parse_known_args(argv)
    args = semi.parse_args(rest)
    args.oracle_seeds = mine.oracle_seeds
    return args


def truth_store(args: argparse.Namespace, unlabeled: list[str]) -> SliceStore:
    """OUT/truth.zarr: the unlabeled scans with their true masks, converted like the benchmark's stores."""
    store = args.out / "truth.zarr"
    if (args.out / "truth-ready").exists():
        return SliceStore.open(store)
    raw, own = args.out / "truth-raw", args.out / "truth-own"
    shutil.rmtree(raw, ignore_errors=True), shutil.rmtree(own, ignore_errors=True), shutil.rmtree(store, True)
    make_demo(raw, DemoConfig(cases=args.pool + args.test + args.unlabeled, seed=0, size=args.demo_size,
                              max_slices=args.max_slices, difficulty="realistic"))
    own.mkdir()
    for case in unlabeled:
        if not filecmp.cmp(raw / f"{case}_ct.nii.gz", args.out / "raw" / f"{case}_ct.nii.gz", shallow=False):
            raise UsageError(f"{raw / f'{case}_ct.nii.gz'}: expected the benchmark's unlabeled scan byte for byte, "
                             "found another; run with the options of the benchmarks/semi.py run in --out")
        for name in (f"{case}_ct.nii.gz", f"{case}_seg.nii.gz"):
            os.link(raw / name, own / name)
    convert(own, store, ConvertConfig(size=args.size), progress=False)
    write_text(args.out / "truth-ready", "")
    return SliceStore.open(store)


def quality(store: SliceStore, truth: SliceStore, cases: list[str]) -> list[object]:
    """Pseudo-label Dice, recall, precision (pixels pooled over ``cases``), lesion slices found / true, and how
    well the case confidence (what --min-confidence cuts on) ranks the cases' own pseudo-label Dice."""
    from scipy.stats import spearmanr

    inter = pred = true = pred_slices = true_slices = 0
    confidence, case_dice = [], []
    for case in cases:
        mask, target = store.read_pseudo(case), truth.read_mask(case)
        if mask is None:
            continue
        confidence.append(float(np.mean(store.pseudo_record(case)["confidence"])))
        case_dice.append(2 * int((mask & target).sum()) / max(int(mask.sum()) + int(target.sum()), 1))
        inter += int((mask & target).sum())
        pred, true = pred + int(mask.sum()), true + int(target.sum())
        pred_slices += int(mask.any(axis=(1, 2)).sum())
        true_slices += int(target.any(axis=(1, 2)).sum())
    rho = spearmanr(confidence, case_dice).statistic if len(confidence) > 2 else float("nan")
    return [f"{2 * inter / max(pred + true, 1):.3f}", f"{inter / max(true, 1):.3f}", f"{inter / max(pred, 1):.3f}",
            pred_slices, true_slices, f"{min(confidence, default=0):.4f}–{max(confidence, default=0):.4f}",
            f"{rho:+.2f}"]


def oracle_run(args: argparse.Namespace, n_labelled: int, seed: int, truth: SliceStore, unlabeled: list[str],
               console) -> Path:
    """Train the pseudo-1 arm of (L, seed) with the true masks as pseudo-labels; returns the run folder."""
    folder = args.out / f"L{n_labelled}" / f"seed{seed}" / "pseudo-oracle"
    run = folder / "run"
    if (run / SUMMARY_FILE).exists():
        return run
    store = semi.arm_store(args.out / f"L{n_labelled}" / "store.zarr", folder)
    with store_lock(store):
        for case in unlabeled:
            mask = truth.read_mask(case)
            record = make_record({"run": "truth", "checkpoint": "truth", "checkpoint_sha256": "truth",
                                  "threshold": 0.5}, mask, np.ones(len(mask)))
            write_pseudo(store, case, mask, record)
        rebuild_index(SliceStore.open(store))
    cfg = semi.budgeted(semi.train_config(args, seed, "pseudo-1"), store, args.steps)
    shutil.rmtree(run, ignore_errors=True)
    console.print(f"diagnose: L={n_labelled} seed {seed} pseudo-oracle: {cfg.epochs} epochs")
    train(store, ModelConfig(width=args.width), cfg, out=run, console=console)
    return run


def main(argv: list[str] | None = None) -> None:
    """Quality of every stored pseudo-label, then the oracle arm; print both tables and write OUT/diagnose.md."""
    start = time.perf_counter()
    args = parse_args(argv)
    console = make_console(stderr=True)
    _, _, _, unlabeled = semi.prepare_raw(args)
    truth = truth_store(args, unlabeled)
    quality_rows, oracle_rows = [], []
    for n_labelled in args.labelled:
        for seed in range(args.seeds):
            for arm in PSEUDO_ARMS:
                store = args.out / f"L{n_labelled}" / f"seed{seed}" / arm / "store.zarr"
                if store.exists():
                    quality_rows.append([n_labelled, seed, arm, *quality(SliceStore.open(store), truth, unlabeled)])
            if seed < args.oracle_seeds:
                base = args.out / f"L{n_labelled}" / "store.zarr"
                runs = [args.out / f"L{n_labelled}" / f"seed{seed}" / arm / "run" for arm in ("supervised", "pseudo-1")]
                runs.append(oracle_run(args, n_labelled, seed, truth, unlabeled, console))
                oracle_rows.append([n_labelled, seed, *(f"{semi.test_dice(r, base, args.device).mean():.3f}"
                                                        if (r / SUMMARY_FILE).exists() else "-" for r in runs)])
    print_table("pseudo-labels against the truth (store grid)", list(QUALITY_COLUMNS), quality_rows)
    print_table("test Dice: true masks as pseudo-labels", list(ORACLE_COLUMNS), oracle_rows)
    minutes = (time.perf_counter() - start) / 60
    write_text(args.out / "diagnose.md", "\n".join([
        "# Pseudo-labels against the truth", "", markdown_table(QUALITY_COLUMNS, quality_rows), "",
        "# Test Dice with the true masks as pseudo-labels (pseudo-oracle)", "",
        markdown_table(ORACLE_COLUMNS, oracle_rows), "", f"This invocation took {minutes:.1f} min.", ""]))
    print(f"wrote {args.out / 'diagnose.md'}; wall time {minutes:.1f} min")


if __name__ == "__main__":
    try:
        main()
    except CtstackError as err:
        raise SystemExit(f"error: {err}") from None
