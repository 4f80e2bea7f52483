"""The study's comparison reproduced on demo data: `unet2d` vs `dual-encoder`, same plan, schedule and seed.

Run: python benchmarks/compare_models.py [--cases 24] [--demo-size 256] [--size 128] [--epochs 30]
                                         [--device auto] [--workdir bench-out/compare] [--out docs/results.md]

In one run: write a demo set, convert it, build ONE plan (ratio 1.75, neighbours 1, a fresh fill per epoch),
train both models on that plan file with the same schedule and seed, evaluate both on the held-out test
patients (ctmodel.compare: the table `ctmodel compare` prints), and write docs/results.md from the measured
figures, with the command that made it and the curves of both runs.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from ctmodel.compare import COLUMNS, compare, side_by_side
from ctmodel.compare_stats import markdown_table
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.evaluate import EvaluateConfig
from ctmodel.train import train
from ctprep.console import print_table
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.index import read_index
from ctsample.plan import PlanConfig, make_plan, save_plan, summary
from ctprep.splits import SplitConfig
from timing import add_demo_options

MODELS = ("unet2d", "dual-encoder")
ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: ~20 min on 2 CPU cores, a few minutes on one GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_demo_options(parser, cases=24, demo_size=256, slices=120, size=96)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--step-size", type=int, default=12, help="StepLR: epochs between x0.1 drops")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-out" / "compare")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    return parser.parse_args()


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """Demo set -> store -> one saved plan; returns (store, plan file, dataset facts)."""
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    cases = make_demo(args.workdir / "raw", DemoConfig(cases=args.cases, seed=args.seed, size=args.demo_size,
                                                       max_slices=args.max_slices))
    store = args.workdir / "store.zarr"
    convert(args.workdir / "raw", store, ConvertConfig(size=args.size, split=SplitConfig(test=0.25, val=0.15,
                                                                                          seed=args.seed)),
            progress=False)
    index = read_index(store)
    plan = make_plan(index, PlanConfig(ratio=1.75, neighbours=1, epochs=args.epochs, seed=args.seed))
    plan_file = save_plan(plan, args.workdir / "plan.parquet")
    per_split = index.groupby("split").agg(patients=("case_id", "nunique"), slices=("slice", "size"),
                                           lesion=("has_lesion", "sum"))
    facts = {"cases": len(cases), "slices": len(index), "lesion": int(index["has_lesion"].sum()),
             "per_split": per_split, "plan": summary(plan), "plan_rows": len(plan.slices)}
    return store, plan_file, facts


def train_both(args: argparse.Namespace, store: Path, plan_file: Path) -> list[Path]:
    """Train every model with the same plan file, schedule and seed; returns the run folders."""
    runs = []
    for name in MODELS:
        model_cfg = ModelConfig(name=name, width=args.width)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, step_size=args.step_size,
                          device=args.device, seed=args.seed)
        run_dir = args.workdir / "runs" / name
        train(store, model_cfg, cfg, out=run_dir, plan_path=plan_file)
        runs.append(run_dir)
    return runs


def copy_curves(runs: list[Path], img_dir: Path) -> list[Path]:
    """Each run's curves.png into docs/img/ as results-<model>-curves.png."""
    img_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for run in runs:
        target = img_dir / f"results-{run.name}-curves.png"
        shutil.copyfile(run / "curves.png", target)
        copied.append(target)
    return copied


def cell(value: object) -> str:
    """A table cell: floats to 3 decimals, large numbers with thousands separators."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def results_table(columns: list[str], rows: list[tuple]) -> str:
    """A GitHub table of the results, cells formatted by ``cell``."""
    return markdown_table(columns, [[cell(v) for v in row] for row in rows])


def device_text(device: str) -> str:
    """What the runs ran on, in words."""
    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, bf16 autocast), torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), torch " \
           f"{torch.__version__}"


def verdict(dual: float, unet: float) -> str:
    """Words for how the dual encoder's Dice compares with the U-Net's (within 0.01 counts as the same)."""
    if abs(dual - unet) < 0.01:
        return "scores about the same as"
    return "scores higher than" if dual > unet else "scores lower than"


def reproducible_argv(argv: list[str]) -> list[str]:
    """The command line without --workdir/--out (they only choose where files go), script path repo-relative."""
    script = Path(argv[0])
    kept = [str(script.relative_to(ROOT)) if script.is_absolute() else argv[0]]
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in ("--workdir", "--out"):
            skip = True
        elif not arg.startswith(("--workdir=", "--out=")):
            kept.append(arg)
    return kept


def write_results(args: argparse.Namespace, facts: dict, comparisons, curves: list[Path]) -> Path:
    """docs/results.md from the measured figures."""
    columns = ["model", *COLUMNS[2:-1]]
    rows = [(c.model, *c.row()[2:-1]) for c in comparisons]
    per_split = facts["per_split"]
    split_text = ", ".join(f"{name} {int(r.patients)} patients / {int(r.slices):,} slices / {int(r.lesion):,} lesion"
                           for name, r in per_split.iterrows())
    plan = facts["plan"].iloc[-1]
    by_model = {c.model: c for c in comparisons}
    dual, unet = by_model["dual-encoder"], by_model["unet2d"]
    d_dice, u_dice = dual.summary["metrics"]["dice"]["mean"], unet.summary["metrics"]["dice"]["mean"]
    command = "python " + " ".join(shlex.quote(a) for a in reproducible_argv(sys.argv))
    text = f"""# Results: the study's comparison, reproduced on demo data

**Synthetic data.** Every figure below comes from `ctprep demo` chest CTs, not from patients. They show that
the pipeline works end to end, that the training signal is real (both models learn to segment lesions they
have never seen, on held-out patients), and what the two models cost relative to each other (parameters,
memory, training and inference time) under identical conditions. They do **not** show clinical accuracy,
and they are not comparable with the study's numbers on COVID-19-20 CT (its Table 5.1: IoU 0.65, Dice 0.72
for the dual encoder, slice-level with empty slices scored 1): the demo lesions are easier than real ones,
and the set is small.

Made by

```console
$ {command}
```

on {device_text(args.device)}, {datetime.date.today().isoformat()}.

## Set-up

- Data: {facts['cases']} demo patients ({args.demo_size}×{args.demo_size} NIfTI, at most {args.max_slices}
  slices each), converted at {args.size}×{args.size}: {facts['slices']:,} slices, {facts['lesion']:,} with lesion.
  Splits per patient: {split_text}.
- One plan for both models: ratio 1.75, neighbours 1, {args.epochs} epochs with a fresh fill each
  ({int(plan['lesion'])} lesion + {int(plan['neighbour'])} neighbour + {int(plan['fill'])} fill slices per epoch;
  ratio before {plan['ratio_before']:.2f}, after {plan['ratio_after']:.2f}).
- Same schedule and seed for both: {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr:g}
  (weight decay 1e-4), StepLR ×0.1 every {args.step_size} epochs, loss 0.7 Dice + 0.3 BCE, augmentation on,
  width {args.width}, seed {args.seed}.
- Evaluation: the best checkpoint (by val 3-D Dice) of each run on the test patients, `ctmodel compare`.

## Test split

{results_table(columns, rows)}

IoU/Dice (3-D) are per case over the whole volume, averaged over test patients; the slice columns are the
study's slice-level means, with the two conventions for slices empty in truth and prediction
([metrics.md](metrics.md)). Peak memory is the training process's peak (GPU memory on CUDA, resident memory
on CPU); inference is network seconds per test case.

The dual encoder {verdict(d_dice, u_dice)} the 2-D U-Net here
(3-D Dice {d_dice:.3f} vs {u_dice:.3f}) at {dual.training.get('parameters', 0) /
max(unet.training.get('parameters', 1), 1):.1f}× the parameters. One seed on a small synthetic set: treat
differences of a few hundredths as noise.

## Training curves

| unet2d | dual-encoder |
|---|---|
| ![unet2d curves](img/{curves[0].name}) | ![dual-encoder curves](img/{curves[1].name}) |

The val 3-D Dice is a mean over few patients, and a lesion-free patient scores 1 with an empty prediction and 0
with a single false-positive speck ([metrics.md](metrics.md)), so the curve can jump by 1/N between epochs;
`best.pt` is chosen on this curve, the slice-level curve is the smoother one.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return args.out


def main() -> None:
    """Prepare, train both, compare, write docs/results.md."""
    args = parse_args()
    store, plan_file, facts = prepare(args)
    runs = train_both(args, store, plan_file)
    comparisons = compare(runs, store, EvaluateConfig(split="test", device=args.device), progress=False)
    print_table("benchmarks/compare_models.py: test split", *side_by_side(comparisons))
    curves = copy_curves(runs, args.out.parent / "img")
    print(f"wrote {write_results(args, facts, comparisons, curves)}")


if __name__ == "__main__":
    pd.set_option("display.width", 160)
    main()
