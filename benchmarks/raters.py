"""Training targets on a several-rater demo set: consensus (the baseline), soft, random-rater and ugs, one budget.

Run: PYTHONPATH=. python benchmarks/raters.py                  (CPU-sized: 12 cases, 4 raters, 64 px, 12 epochs)
     PYTHONPATH=. python benchmarks/raters.py --device cuda --size 256 --demo-size 512 --epochs 40

Writes the demo set with ``--raters`` annotators per case (ctprep.demo), converts it (majority consensus), trains
each target with the same budget and seed, and evaluates each run's last checkpoint on the test split on the native
grid with calibration: Dice against the consensus, against each rater (mean / min / max over raters), the
inter-rater ceiling, the expected calibration error against the rater fraction and the training time, with the
consensus target's run as the baseline of every ratio. Prints one table and writes it to OUT/raters.md.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ctmodel.compare_stats import markdown_table
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.evaluate import EvaluateConfig, evaluate
from ctmodel.train import train
from ctprep.atomic import write_text
from ctprep.console import make_console, print_table
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.splits import SplitConfig

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("consensus", "soft", "random-rater", "ugs")  # consensus first: the baseline
COLUMNS = ("target", "Dice vs consensus", "Dice vs each rater (mean / min / max)", "inter-rater Dice",
           "ECE", "training s", "× consensus")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options (CPU-sized defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--demo-size", type=int, default=256)
    parser.add_argument("--max-slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "raters")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> Path:
    """The several-rater demo set and its store (majority consensus), made afresh under OUT."""
    shutil.rmtree(args.out, ignore_errors=True)
    make_demo(args.out / "raw", DemoConfig(cases=args.cases, seed=args.seed, size=args.demo_size,
                                           max_slices=args.max_slices, raters=args.raters))
    store = args.out / "store.zarr"
    convert(args.out / "raw", store, ConvertConfig(size=args.size, split=SplitConfig(test=0.25, val=0.15)),
            progress=False)
    return store


def run_target(args: argparse.Namespace, store: Path, target: str) -> tuple[dict, float]:
    """Train ``target`` with the shared budget; (its test evaluation summary, training seconds)."""
    model = ModelConfig(heads="ugs" if target == "ugs" else "consensus")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      step_size=max(1, round(0.75 * args.epochs)), seed=args.seed, device=args.device, target=target)
    result = train(store, model, cfg, out=args.out / "runs" / target, console=make_console(stderr=True))
    evaluation = evaluate(result.run_dir, store, EvaluateConfig(split="test", checkpoint="last", device=args.device,
                                                                calibration=True), progress=False)
    return evaluation.summary, float(result.summary["train_seconds"])


def table_row(target: str, summary: dict, seconds: float, baseline_seconds: float) -> list[str]:
    """One row: the test means of the labelled blocks (docs/raters.md, "Evaluation")."""
    raters = summary["raters"]
    per_rater = raters["vs each rater (mean / min / max)"]["dice"]
    return [target, f"{raters['vs consensus']['dice']['mean']:.3f}",
            " / ".join(f"{per_rater[how]['mean']:.3f}" for how in ("mean", "min", "max")),
            f"{raters['inter-rater ceiling']['dice']['mean']:.3f}", f"{summary['calibration']['ece']:.3f}",
            f"{seconds:.0f}", f"{seconds / baseline_seconds:.2f}"]


def main(argv: list[str] | None = None) -> list[list[str]]:
    """Prepare, train and evaluate every target; print and write the table."""
    start = time.perf_counter()
    args = parse_args(argv)
    store = prepare(args)
    results = {target: run_target(args, store, target) for target in TARGETS}
    baseline = results["consensus"][1]
    rows = [table_row(t, summary, seconds, baseline) for t, (summary, seconds) in results.items()]
    print_table(f"training targets, {args.raters} raters, test split (native grid)", list(COLUMNS), rows)
    write_text(args.out / "raters.md", markdown_table(COLUMNS, rows) + "\n")
    print(f"options {vars(args)}; wall time {(time.perf_counter() - start) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    main()
