"""Cost of `ctmodel compare`'s statistics: the vectorised bootstrap vs a per-resample loop, in one run.

Run: python benchmarks/compare_stats.py [--cases 200] [--resamples 10000] [--configs 3] [--folds 5] [--repeats 3]

Per-case differences are synthetic (normal, seed 0). Timed, best of --repeats:
  (a) ctmodel.compare_stats.bootstrap_ci: one (resamples, cases) index draw, one mean per row;
  (b) baseline: the textbook loop, one rng.choice + mean per resample (same Generator, same resamples);
  (c) scipy.stats.wilcoxon on the same differences;
  (d) compare_stats on --configs x --folds synthetic runs, each fold scoring cases/folds cases: every pair of
      configurations x 4 metrics (what `ctmodel compare` adds to its evaluations).
(a) and (b) are checked to agree within 2 % of the CI width.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from ctmodel.compare import RunComparison
from ctmodel.compare_stats import METRICS, StatsConfig, bootstrap_ci, compare_stats
from ctmodel.config import ModelConfig, TrainConfig
from timing import best_of, int_options


def loop_ci(d: np.ndarray, cfg: StatsConfig) -> tuple[float, float]:
    """The baseline bootstrap: one resample per Python iteration."""
    rng = np.random.default_rng(cfg.seed)
    means = np.array([rng.choice(d, d.size).mean() for _ in range(cfg.resamples)])
    return tuple(np.quantile(means, [0.025, 0.975]))


def synthetic_runs(configs: int, folds: int, cases: int) -> list[RunComparison]:
    """configs x folds runs; fold k of every configuration scores the same cases/folds cases."""
    rng = np.random.default_rng(0)
    names = ("unet2d", "dual-encoder")
    runs = []
    for c in range(configs):
        for k in range(folds):
            ids = [f"case{i}" for i in range(k, cases, folds)]
            frame = pd.DataFrame({"case_id": ids, **{m: rng.uniform(size=len(ids)) for m in METRICS}})
            config = {"model": asdict(ModelConfig(name=names[c % 2], width=12 + c)),
                      "train": asdict(TrainConfig(fold=k))}
            summary = {"metrics": {m: {"mean": float(frame[m].mean())} for m in METRICS},
                       "network_seconds_per_case": 0.1}
            runs.append(RunComparison(Path(f"r{c}-{k}"), summary, {}, names[c % 2], False, config, frame))
    return runs


def main() -> None:
    args = int_options(__doc__, cases=200, resamples=10_000, configs=3, folds=5, repeats=3)
    cfg = StatsConfig(resamples=args.resamples)
    d = np.random.default_rng(0).normal(0.02, 0.1, args.cases)
    fast, (lo, hi) = best_of(lambda: bootstrap_ci(d, cfg), args.repeats)
    slow, (slo, shi) = best_of(lambda: loop_ci(d, cfg), 1)
    assert max(abs(lo - slo), abs(hi - shi)) < 0.02 * (hi - lo), (lo, hi, slo, shi)
    test, _ = best_of(lambda: wilcoxon(d), args.repeats)
    runs = synthetic_runs(args.configs, args.folds, args.cases)
    whole, stats = best_of(lambda: compare_stats(runs, cfg), args.repeats)
    print(f"{args.cases} cases, {args.resamples:,} resamples")
    print(f"(a) bootstrap_ci (vectorised)       {fast * 1e3:9.1f} ms   CI [{lo:.4f}, {hi:.4f}]")
    print(f"(b) baseline loop of rng.choice      {slow * 1e3:9.1f} ms   CI [{slo:.4f}, {shi:.4f}]   "
          f"(b)/(a) = {slow / fast:.1f}x")
    print(f"(c) scipy.stats.wilcoxon             {test * 1e3:9.2f} ms")
    print(f"(d) compare_stats, {args.configs} configs x {args.folds} folds, {len(stats.differences)} differences "
          f"{whole * 1e3:9.1f} ms   = {whole / fast:.1f} x (a)")


if __name__ == "__main__":
    main()
