"""Do unlabeled scans help? Supervised only vs pseudo-labels (one and two rounds, balanced plan), pseudo-labels with
--ratio natural (the source study's failure mode) and the mean teacher, at 4, 8 and 16 labelled patients.

Run: PYTHONPATH=. python benchmarks/semi.py --quick            (the CPU-sized measurement, docs/results.md)
     PYTHONPATH=. python benchmarks/semi.py --device cuda      (the full one, on a GPU)

In one process: write a realistic demo set with a pool of labelled patients, a labelled test set and --unlabeled
scans without masks (`ctprep demo --unlabeled`); per labelled count L, convert a store of the first L pool patients
(a fixed, nested order), the test patients and every unlabeled scan. Per L and seed, five arms, each in its own
hard-linked copy of that store (pseudo-labels live in the store):

  supervised     plan 1.75 over the L labelled patients
  pseudo-1       pseudo-label the unlabeled scans with `supervised`, train on the labelled + pseudo plan (1.75)
  pseudo-2       pseudo-label again with `pseudo-1`, train again (a second round)
  pseudo-natural as pseudo-1 with --ratio natural (every slice of every patient: the study's setting)
  mean-teacher   `--semi mean-teacher` on the L labelled patients and the unlabeled scans

Every training run has the same budget: --steps optimizer steps of --batch-size samples (epochs = steps / the
plan's steps per epoch, rounded; StepLR x0.1 after 3/4 of them). Every run is scored on the test patients (native
grid, last checkpoint). Per L and arm: test Dice mean ± sd over seeds, and per test case (Dice averaged over seeds)
the paired difference against `supervised` with a bootstrap 95 % CI and a Wilcoxon p. Writes OUT/semi.md and
OUT/semi.csv. Resumable: finished runs and saved evaluations are re-used.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctmodel.compare import compare
from ctmodel.compare_stats import StatsConfig, bootstrap_ci, markdown_table, wilcoxon_p
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.evaluate import EvaluateConfig
from ctmodel.pseudolabel import PseudoLabelConfig, pseudo_label
from ctmodel.runfolder import SUMMARY_FILE, build_plan
from ctmodel.train import train
from ctprep.atomic import write_text
from ctprep.console import make_console, print_table
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.errors import CtstackError, UsageError
from ctprep.index import read_index
from ctprep.splits import SplitConfig
from ctsample.resplit import resplit

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("supervised", "pseudo-1", "pseudo-2", "pseudo-natural", "mean-teacher")
TEACHER = {"pseudo-1": "supervised", "pseudo-2": "pseudo-1", "pseudo-natural": "supervised"}  # who pseudo-labels
SIZES = {  # --quick: CPU-sized; full: a GPU
    "quick": dict(pool=16, test=12, unlabeled=40, demo_size=128, max_slices=24, size=64, steps=300, batch_size=8,
                  lr=1e-3, seeds=3, width=8),
    "full": dict(pool=16, test=20, unlabeled=40, demo_size=512, max_slices=None, size=256, steps=3000,
                 batch_size=16, lr=5e-4, seeds=3, width=12),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; sizes left out come from --quick's or the full run's presets (SIZES)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CPU-sized measurement")
    for name in ("pool", "test", "unlabeled", "demo_size", "max_slices", "size", "steps", "batch_size", "seeds",
                 "width"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--labelled", default="4,8,16", help="comma list of labelled patient counts")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma list from {', '.join(ARMS)}")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples per difference")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "semi")
    args = parser.parse_args(argv)
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.labelled = [int(n) for n in args.labelled.split(",")]
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown or max(args.labelled) > args.pool or min(args.labelled) < 1:
        raise UsageError(f"--arms {unknown} / --labelled {args.labelled}: expected arms from {', '.join(ARMS)} "
                         f"and counts in 1..{args.pool} (--pool)")
    missing = sorted({TEACHER[a] for a in args.arms if a in TEACHER} - set(args.arms))
    if missing:
        raise UsageError(f"--arms {','.join(args.arms)}: the pseudo-label arms need their teachers {missing} too")
    return args


def prepare_raw(args: argparse.Namespace) -> tuple[Path, list[str], list[str], list[str]]:
    """The demo set under OUT/raw (made once per option set): (raw folder, pool ids, test ids, unlabeled ids)."""
    facts = {k: getattr(args, k) for k in ("pool", "test", "unlabeled", "demo_size", "max_slices")}
    raw, marker = args.out / "raw", args.out / "data.json"
    if not (marker.exists() and json.loads(marker.read_text()) == facts):
        shutil.rmtree(args.out, ignore_errors=True)
        make_demo(raw, DemoConfig(cases=args.pool + args.test, unlabeled=args.unlabeled, seed=0,
                                  size=args.demo_size, max_slices=args.max_slices, difficulty="realistic"))
        write_text(marker, json.dumps(facts))
    images = sorted(p.name[: -len("_ct.nii.gz")] for p in raw.glob("*_ct.nii.gz"))
    labelled = [c for c in images if (raw / f"{c}_seg.nii.gz").exists()]
    unlabeled = [c for c in images if c not in labelled]
    return raw, labelled[: args.pool], labelled[args.pool:], unlabeled


def prepare_store(args: argparse.Namespace, raw: Path, pool: list[str], test: list[str], unlabeled: list[str],
                  n_labelled: int) -> Path:
    """OUT/L<n>/store.zarr: the first ``n_labelled`` pool patients (train), the test patients, every unlabeled scan
    (train). Its raw folder holds hard links to the demo files."""
    folder = args.out / f"L{n_labelled}"
    store = folder / "store.zarr"
    if (folder / "ready").exists():
        return store
    shutil.rmtree(folder, ignore_errors=True)
    own = folder / "raw"
    own.mkdir(parents=True)
    for case in [*pool[:n_labelled], *test, *unlabeled]:
        for path in raw.glob(f"{case}_*.nii.gz"):
            os.link(path, own / path.name)
    convert(own, store, ConvertConfig(size=args.size), progress=False)
    csv = folder / "splits.csv"
    rows = [f"{c},train\n" for c in [*pool[:n_labelled], *unlabeled]] + [f"{c},test\n" for c in test]
    write_text(csv, "case_id,split\n" + "".join(rows))
    resplit(store, SplitConfig(csv=csv))
    write_text(folder / "ready", "")
    return store


def arm_store(base: Path, folder: Path) -> Path:
    """A hard-linked copy of ``base`` in ``folder``: pseudo-labels rebuild a case folder (never a file in place),
    so the copies share every byte they have in common and never touch each other."""
    store = folder / "store.zarr"
    if not store.exists():
        tmp = folder / "store.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp, copy_function=os.link, ignore=shutil.ignore_patterns(".lock", "plans"))
        os.replace(tmp, store)
    return store


def train_config(args: argparse.Namespace, seed: int, arm: str) -> TrainConfig:
    """The arm's options at one epoch (``budgeted`` sets the epochs)."""
    extra = {"supervised": {}, "pseudo-1": {"pseudo": True}, "pseudo-2": {"pseudo": True},
             "pseudo-natural": {"pseudo": True, "ratio": None}, "mean-teacher": {"semi": "mean-teacher"}}[arm]
    return TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device, **extra)


def budgeted(cfg: TrainConfig, store: Path, steps: int) -> TrainConfig:
    """``cfg`` with the epochs that give about ``steps`` optimizer steps on the plan train builds from ``store``."""
    slices, _ = build_plan(read_index(store), cfg, store)
    per_epoch = math.ceil((slices["epoch"] == slices["epoch"].min()).sum() / cfg.batch_size)
    epochs = max(1, round(steps / per_epoch))
    return replace(cfg, epochs=epochs, step_size=max(1, round(0.75 * epochs)))


def run_arm(args: argparse.Namespace, base: Path, n_labelled: int, seed: int, arm: str, console) -> Path:
    """Train one arm (pseudo-labelling its store with its teacher first); returns its run folder."""
    folder = args.out / f"L{n_labelled}" / f"seed{seed}" / arm
    run = folder / "run"
    if (run / SUMMARY_FILE).exists():
        return run
    folder.mkdir(parents=True, exist_ok=True)
    store = arm_store(base, folder)
    if arm in TEACHER:
        teacher = args.out / f"L{n_labelled}" / f"seed{seed}" / TEACHER[arm] / "run"
        pseudo_label(teacher, store, PseudoLabelConfig(checkpoint="last", device=args.device), progress=False)
    cfg = budgeted(train_config(args, seed, arm), store, args.steps)
    resume = (run / "last.pt").exists()
    if run.exists() and not resume:
        shutil.rmtree(run)
    console.print(f"semi: L={n_labelled} seed {seed} {arm}: {cfg.epochs} epochs")
    train(store, ModelConfig(width=args.width), cfg, out=run, resume=resume, console=console)
    return run


def test_dice(run: Path, store: Path, device: str) -> pd.Series:
    """case_id -> test Dice of ``run``'s last checkpoint (native grid; a saved evaluation is re-used)."""
    scored = compare([run], store, EvaluateConfig(split="test", checkpoint="last", device=device), progress=False)[0]
    return scored.cases.set_index("case_id")["dice"].astype(float)


def tabulate(scores: dict[tuple[int, str], dict[int, pd.Series]], args: argparse.Namespace) -> list[list[object]]:
    """Per L and arm: test Dice mean ± sd over seeds, and the paired difference against supervised per test case
    (Dice averaged over seeds) with its bootstrap CI and Wilcoxon p."""
    stats = StatsConfig(resamples=args.resamples)
    rows = []
    for n_labelled in args.labelled:
        reference = pd.concat(scores[(n_labelled, "supervised")], axis=1).mean(axis=1)
        for arm in args.arms:
            per_seed = scores[(n_labelled, arm)]
            means = [s.mean() for s in per_seed.values()]
            case_mean = pd.concat(per_seed, axis=1).mean(axis=1)
            paired = pd.concat({"a": reference, "b": case_mean}, axis=1, join="inner").dropna()
            diff = (paired["b"] - paired["a"]).to_numpy()
            low, high = bootstrap_ci(diff, stats)
            rows.append([n_labelled, arm, len(means), f"{np.mean(means):.3f} ± {np.std(means, ddof=1) if len(means) > 1 else 0:.3f}",
                         "-" if arm == "supervised" else f"{diff.mean():+.3f}",
                         "-" if arm == "supervised" else f"[{low:+.3f}, {high:+.3f}]",
                         "-" if arm == "supervised" or math.isnan(wilcoxon_p(diff)) else f"{wilcoxon_p(diff):.3f}"])
    return rows


COLUMNS = ("labelled", "arm", "seeds", "test Dice (mean ± sd over seeds)", "Δ vs supervised", "95 % CI", "Wilcoxon p")


def main(argv: list[str] | None = None) -> list[list[object]]:
    """Prepare, train every arm, evaluate, tabulate; print the table and the wall time."""
    start = time.perf_counter()
    args = parse_args(argv)
    console = make_console(stderr=True)
    raw, pool, test, unlabeled = prepare_raw(args)
    scores: dict[tuple[int, str], dict[int, pd.Series]] = {}
    for n_labelled in args.labelled:
        base = prepare_store(args, raw, pool, test, unlabeled, n_labelled)
        for seed in range(args.seeds):
            for arm in args.arms:
                run = run_arm(args, base, n_labelled, seed, arm, console)
                scores.setdefault((n_labelled, arm), {})[seed] = test_dice(run, base, args.device)
    rows = tabulate(scores, args)
    seconds = time.perf_counter() - start
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    text = "\n".join([f"# Unlabeled scans: semi-supervised arms (realistic demo)", "",
                      f"Options: `{json.dumps(options)}`; this invocation took {seconds / 60:.1f} min.", "",
                      markdown_table(COLUMNS, rows), ""])
    write_text(args.out / "semi.md", text)
    write_text(args.out / "semi.csv", pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False))
    print_table("unlabeled scans: test Dice", list(COLUMNS), rows)
    print(f"wrote {args.out / 'semi.md'}; wall time {seconds / 60:.1f} min")
    return rows


if __name__ == "__main__":
    try:
        main()
    except CtstackError as err:
        raise SystemExit(f"error: {err}") from None
