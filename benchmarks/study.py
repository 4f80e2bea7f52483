"""The study's claims, tested: Table 5.2, the fusion ablation and the sampler ablation by K-fold cross-validation.

Run: PYTHONPATH=. python benchmarks/study.py --quick                 (the CPU-sized study, docs/results.md)
     PYTHONPATH=. python benchmarks/study.py --device cuda           (the full study, on a GPU)
     PYTHONPATH=. python benchmarks/study.py --quick --only unet2d,dual-encoder   (a subset)

In one process: write the demo set (ctprep.demo, realistic unless --difficulty easy), convert it, deal its patients
into a test share and K folds (ctsample's resplit with a split CSV); train every configuration on every fold with
one budget (epochs, batch, lr, schedule, seed; plan rule 1.75 / neighbours 1 unless the sampler ablation changes
it); evaluate every run's last checkpoint on its held-out fold (out-of-fold) and on the test split, native grid;
tabulate with ctmodel's compare machinery: per configuration mean ± sd over folds, and per-case paired differences
against the reference (dual-encoder) with a bootstrap 95 % CI and a Wilcoxon p. Writes OUT/study.md, OUT/study.csv
and, per table and split, OUT/<table>-<split>.md/.csv (compare's format, every pair). Resumable: a run whose
summary.json exists is not trained again, a saved evaluation that matches is re-used, a run cut short resumes from
last.pt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ctmodel.compare import RunComparison, compare
from ctmodel.compare_stats import StatsConfig, compare_stats, group_runs, markdown_table, write_outputs
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.evaluate import EvaluateConfig
from ctmodel.runfolder import SUMMARY_FILE
from ctmodel.train import train
from ctprep.atomic import write_text
from ctprep.console import make_console, print_table
from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.errors import CtstackError, UsageError
from ctprep.splits import FoldConfig, SplitConfig
from ctsample.resplit import resplit

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "dual-encoder"  # the shared configuration: dual encoder, learned fusion, residual blocks, ratio 1.75
SPLITS = {"val": "out-of-fold", "test": "test"}  # evaluate's --split of a fold run -> what its scores are
DIFFERENCE_METRICS = ("dice", "iou", "nsd", "fp_rate")
TEST_SHARE = 0.2  # of the patients held out as the test split; the others are dealt into the K folds


@dataclass(frozen=True)
class Configuration:
    """One row of a table: the ModelConfig and plan-rule fields it sets (the rest is the shared budget)."""

    name: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


CONFIGURATIONS = (
    Configuration("unet2d", {"name": "unet2d"}),
    Configuration("unet2d-context3", {"name": "unet2d", "context": 3}),
    Configuration(REFERENCE),
    Configuration("unet3d", {"name": "unet3d"}),
    Configuration("dual-encoder-idc", {"block": "idc"}),
    Configuration("fusion-fixed", {"fusion": "fixed"}),
    Configuration("fusion-concat", {"fusion": "concat"}),
    Configuration("fusion-bottleneck", {"fusion": "bottleneck"}),
    Configuration("ratio-natural", train={"ratio": None}),
    Configuration("lesion-only", train={"ratio": 0.0, "neighbours": 0, "lesion_free": 0.0}),
    Configuration("ratio-0", train={"ratio": 0.0}),
    Configuration("ratio-1.0", train={"ratio": 1.0}),
    Configuration("ratio-3.0", train={"ratio": 3.0}),
)
TABLES = {  # table -> its rows in order; the reference row is trained once and shared
    "table-5.2": ("unet2d", "unet2d-context3", REFERENCE, "unet3d", "dual-encoder-idc"),
    "fusion": (REFERENCE, "fusion-fixed", "fusion-concat", "fusion-bottleneck"),
    "sampler": ("ratio-natural", "lesion-only", "ratio-0", "ratio-1.0", REFERENCE, "ratio-3.0"),
}
SIZES = {  # --quick: the CPU-sized study (docs/results.md has the measurement); full: a GPU
    "quick": dict(cases=15, demo_size=128, max_slices=24, size=64, folds=5, epochs=12, batch_size=8, lr=1e-3,
                  patch_depth=8),
    "full": dict(cases=60, demo_size=512, max_slices=None, size=256, folds=5, epochs=40, batch_size=16, lr=5e-4,
                 patch_depth=32),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; sizes left out come from --quick's or the full study's presets (SIZES)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CPU-sized study (~25 min on 2 cores)")
    for name in ("cases", "demo_size", "max_slices", "size", "folds", "epochs", "batch_size", "patch_depth"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="AdamW; StepLR x0.1 after 3/4 of the epochs")
    parser.add_argument("--difficulty", default="realistic", choices=("realistic", "easy"),
                        help="the demo set (easy: to measure how much harder realistic is at one budget)")
    parser.add_argument("--only", default=None, help="comma list of configurations (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples per difference")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "study")
    args = parser.parse_args(argv)
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def selected(only: str | None) -> list[Configuration]:
    """The configurations to run, in CONFIGURATIONS order; UsageError for an unknown name or an unbuildable one."""
    by_name = {c.name: c for c in CONFIGURATIONS}
    names = [n.strip() for n in only.split(",") if n.strip()] if only else list(by_name)
    unknown = sorted(set(names) - set(by_name))
    if unknown or not names:
        raise UsageError(f"--only {only}: expected names from {', '.join(by_name)}, found {unknown or 'none'}")
    chosen = [c for c in CONFIGURATIONS if c.name in names]
    for config in chosen:
        try:
            ModelConfig(**config.model)
        except UsageError as err:
            raise UsageError(f"configuration {config.name}: {err}; leave it out with --only") from err
    return chosen


def model_config(args: argparse.Namespace, config: Configuration) -> ModelConfig:
    """The configuration's network; unet3d's training patch and inference window are --patch-depth slices deep
    (so a step holds --batch-size slices when the two are equal, docs/model.md, "Budget")."""
    if config.model.get("name") == "unet3d":
        return ModelConfig(**config.model, patch_depth=args.patch_depth)
    return ModelConfig(**config.model)


def budget(args: argparse.Namespace, config: Configuration, fold: int) -> TrainConfig:
    """The shared training budget for ``fold``, with the configuration's plan rule."""
    step = max(1, round(0.75 * args.epochs))
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, step_size=step, seed=args.seed,
                       device=args.device, fold=fold, **config.train)


def deal(case_ids: list[str], folds: int, seed: int) -> dict[str, tuple[str, int | None]]:
    """case_id -> (split, fold): a seeded hash order; the first TEST_SHARE are test, the rest dealt round-robin
    into the folds (balanced fold sizes, which the per-case hash does not give on a few patients)."""
    order = sorted(case_ids, key=lambda c: hashlib.sha256(f"study:{seed}:{c}".encode()).hexdigest())
    n_test = max(1, round(TEST_SHARE * len(order)))
    if len(order) - n_test < folds:
        raise UsageError(f"--cases {len(order)}: expected at least {folds + n_test} patients for {folds} folds and "
                         f"{n_test} test patients; raise --cases or lower --folds")
    dealt = {c: ("test", None) for c in order[:n_test]}
    dealt.update({c: ("train", i % folds) for i, c in enumerate(order[n_test:])})
    return dealt


def prepare(args: argparse.Namespace) -> Path:
    """The demo set, its store and folds under OUT (re-used when made with the same options)."""
    facts = {k: getattr(args, k) for k in ("cases", "demo_size", "max_slices", "size", "folds", "seed", "difficulty")}
    store, marker = args.out / "store.zarr", args.out / "data.json"
    if marker.exists():
        made = json.loads(marker.read_text())
        if made != facts:
            raise UsageError(f"{marker}: expected a study made with {facts}, found {made}; pass those options or "
                             "another --out")
        return store
    shutil.rmtree(args.out / "raw", ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    rows = make_demo(args.out / "raw", DemoConfig(cases=args.cases, seed=args.seed, size=args.demo_size,
                                                  max_slices=args.max_slices, difficulty=args.difficulty))
    convert(args.out / "raw", store, ConvertConfig(size=args.size), progress=False)
    dealt = deal(rows["case_id"].astype(str).tolist(), args.folds, args.seed)
    csv = args.out / "splits.csv"
    write_text(csv, "case_id,split,fold\n" + "".join(f"{c},{s},{'' if k is None else k}\n"
                                                    for c, (s, k) in sorted(dealt.items())))
    resplit(store, SplitConfig(csv=csv, seed=args.seed), folds=args.folds)
    write_text(marker, json.dumps(facts))
    return store


def run_dir(args: argparse.Namespace, name: str, fold: int) -> Path:
    """OUT/runs/<configuration>/fold-<k>."""
    return args.out / "runs" / name / f"fold-{fold}"


def train_all(args: argparse.Namespace, store: Path, configs: list[Configuration]) -> dict[str, int]:
    """Train every configuration on every fold; finished runs are skipped, cut-short ones resumed."""
    counts = {"trained": 0, "resumed": 0, "skipped": 0}
    console = make_console(stderr=True)
    for config in configs:
        for fold in range(args.folds):
            out = run_dir(args, config.name, fold)
            if (out / SUMMARY_FILE).exists():
                counts["skipped"] += 1
                continue
            resume = (out / "last.pt").exists()
            if out.exists() and not resume:
                shutil.rmtree(out)  # nothing worth keeping: no finished epoch
            console.print(f"study: {config.name} fold {fold} ({'resume' if resume else 'train'})")
            train(store, model_config(args, config), budget(args, config, fold), out=out, resume=resume,
                  console=console)
            counts["resumed" if resume else "trained"] += 1
    return counts


def evaluate_all(args: argparse.Namespace, store: Path, configs: list[Configuration],
                 split: str) -> dict[str, list[RunComparison]]:
    """Configuration -> its fold runs evaluated on ``split`` (last checkpoint, native grid; saved ones re-used)."""
    cfg = EvaluateConfig(split=split, checkpoint="last", device=args.device)
    return {c.name: compare([run_dir(args, c.name, k) for k in range(args.folds)], store, cfg, progress=False)
            for c in configs}


@dataclass(frozen=True)
class StudyTable:
    """One table on one split: per configuration figures and the paired differences against the reference."""

    table: str
    split: str
    reference: str
    rows: list[list[object]]
    differences: list[list[object]]

    ROW_COLUMNS = ("configuration", "folds", "Dice", "IoU", "NSD", "FP rate (per case)", "FP rate (pooled)",
                   "training min", "parameters")
    DIFFERENCE_COLUMNS = ("configuration", "metric", "cases", "mean B - ref", "95 % CI", "Wilcoxon p")

    @property
    def title(self) -> str:
        """'<table>, <split> (reference: ...)'."""
        return f"{self.table}, {SPLITS[self.split]} (reference: {self.reference})"


def study_table(table: str, split: str, runs: dict[str, list[RunComparison]], args: argparse.Namespace) -> StudyTable:
    """compare_stats over the table's configurations (reference first, so every pair is B - reference), written
    to OUT/<table>-<split>.md/.csv, and the study's rows."""
    names = [n for n in TABLES[table] if n in runs]
    reference = REFERENCE if REFERENCE in names else names[0]
    ordered = [reference, *(n for n in names if n != reference)]
    stats = compare_stats([r for n in ordered for r in runs[n]], StatsConfig(resamples=args.resamples))
    stem = f"{table}-{SPLITS[split]}".replace(".", "-")  # table-5-2-test.md: the suffix is compare's to set
    write_outputs(stats, args.out / f"{stem}.md", f"{table}, {SPLITS[split]}")
    label = {lab: members[0].run_dir.parent.name for lab, members in group_runs([r for n in ordered
                                                                                  for r in runs[n]]).items()}
    groups = stats.groups.rename(index=label)
    rows = [config_row(n, groups.loc[n], runs[n]) for n in names]
    differences = [[label[d.b], d.metric, d.cases, _num(d.mean), f"[{_num(d.ci_low)}, {_num(d.ci_high)}]",
                    _num(d.p_wilcoxon)] for d in stats.differences
                   if label[d.a] == reference and d.metric in DIFFERENCE_METRICS]
    return StudyTable(table, split, reference, rows, differences)


def config_row(name: str, group: pd.Series, runs: list[RunComparison]) -> list[object]:
    """A configuration's row: metrics mean ± sd over folds, the FP rate pooled over every run's lesion-free
    slices, training minutes, parameters."""
    empty = sum(r.summary["fp_slices"]["empty_truth"] for r in runs)
    false = sum(r.summary["fp_slices"]["false_positive"] for r in runs)
    pm = [f"{_num(group[f'{m}_mean'])} ± {_num(group[f'{m}_sd'])}" for m in ("dice", "iou", "nsd", "fp_rate")]
    return [name, int(group["runs"]), *pm, _num(false / empty if empty else math.nan),
            f"{_num(group['training_min_mean'])} ± {_num(group['training_min_sd'])}",
            f"{group['parameters_mean']:,.0f}" if math.isfinite(group["parameters_mean"]) else "-"]


def _num(value: float) -> str:
    """Three decimals; '-' for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def write_study(tables: list[StudyTable], args: argparse.Namespace, seconds: float) -> tuple[Path, Path]:
    """OUT/study.md (every table) and OUT/study.csv (the same rows, tidy)."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    parts = [f"# The study, tested (synthetic data: `ctprep demo --difficulty {args.difficulty}`)", "",
             f"Options: `{json.dumps(options)}`; this invocation took {seconds / 60:.1f} min.", ""]
    frames = []
    for t in tables:
        parts += [f"## {t.title}", "", markdown_table(t.ROW_COLUMNS, t.rows), ""]
        if t.differences:
            parts += ["Per-case paired differences against the reference (bootstrap 95 % CI, Wilcoxon signed-rank p):",
                      "", markdown_table(t.DIFFERENCE_COLUMNS, t.differences), ""]
        frames.append(pd.DataFrame(t.rows, columns=list(t.ROW_COLUMNS)).assign(section="configuration"))
        frames.append(pd.DataFrame(t.differences, columns=list(t.DIFFERENCE_COLUMNS)).assign(section="difference"))
        for frame in frames[-2:]:
            frame.insert(0, "split", SPLITS[t.split])
            frame.insert(0, "table", t.table)
    md, csv = args.out / "study.md", args.out / "study.csv"
    write_text(md, "\n".join(parts))
    write_text(csv, pd.concat(frames, ignore_index=True).to_csv(index=False))
    return md, csv


def shown_tables(runs: dict[str, list[RunComparison]]) -> list[str]:
    """The tables with two or more of the configurations run (all of them with one when none has two)."""
    counts = {t: sum(n in runs for n in names) for t, names in TABLES.items()}
    return [t for t, n in counts.items() if n >= 2] or [t for t, n in counts.items() if n]


def main(argv: list[str] | None = None) -> list[StudyTable]:
    """Prepare, train, evaluate, tabulate; print the tables and the wall time."""
    start = time.perf_counter()
    args = parse_args(argv)
    configs = selected(args.only)
    StatsConfig(resamples=args.resamples)  # a bad option fails before any work
    if FoldConfig(folds=args.folds).folds == 0:
        raise UsageError("--folds 0: expected 2 or more folds (the study is a cross-validation)")
    budget(args, configs[0], 0)
    store = prepare(args)
    counts = train_all(args, store, configs)
    tables = []
    for split in SPLITS:
        runs = evaluate_all(args, store, configs, split)
        tables += [study_table(t, split, runs, args) for t in shown_tables(runs)]
    seconds = time.perf_counter() - start
    files = write_study(tables, args, seconds)
    for t in tables:
        print_table(t.title, list(t.ROW_COLUMNS), t.rows)
        if t.differences:
            print_table(f"{t.table}, {SPLITS[t.split]}: B - {t.reference}", list(t.DIFFERENCE_COLUMNS), t.differences)
    print(f"runs: {counts}; wrote {', '.join(map(str, files))}; wall time {seconds / 60:.1f} min")
    return tables


if __name__ == "__main__":
    try:
        main()
    except CtstackError as err:  # bad options or data: one line, as the CLI prints them
        raise SystemExit(f"error: {err}") from None
