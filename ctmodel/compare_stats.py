"""`ctmodel compare`'s statistics over several runs per configuration (folds or seeds): mean ± sd over runs,
per-case paired differences between configurations with a Wilcoxon signed-rank p-value and a bootstrap 95 % CI
of the mean difference, resources per configuration; as Markdown, CSV and one box/strip PNG per metric."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ctprep.atomic import replacing, write_text
from ctprep.errors import UsageError

if TYPE_CHECKING:
    from ctmodel.compare import RunComparison

METRICS = ("dice", "iou", "nsd", "hd95_mm", "fp_rate")  # per-case metrics compared (columns of eval-<split>.csv):
# the 3-D scores and the slice-level false-positive rate on lesion-free slices (NaN for a case without any: unpaired)
RUN_LEVEL_KEYS = ("seed", "fold")  # train-config fields that vary between runs of one configuration
RESOURCES = (("parameters", "parameters"), ("peak memory MB", "peak_memory_mb"))


@dataclass(frozen=True)
class StatsConfig:
    """How the paired differences are tested: bootstrap resamples and their seed, the CI level."""

    resamples: int = 10_000  # bootstrap resamples of the cases (percentile CI)
    seed: int = 0  # seed of the numpy Generator that draws them
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise UsageError(f"--resamples {self.resamples}: expected 1 or more bootstrap resamples")
        if not 0.0 < self.level < 1.0:
            raise UsageError(f"CI level {self.level}: expected a fraction between 0 and 1 (exclusive)")


def configuration_key(config: dict) -> str:
    """The grouping key of a run: config.json's model and train sections minus seed and fold, as sorted JSON."""
    train = {k: v for k, v in (config.get("train") or {}).items() if k not in RUN_LEVEL_KEYS}
    return json.dumps({"model": config.get("model") or {}, "train": train}, sort_keys=True, default=str)


def group_runs(runs: list[RunComparison]) -> dict[str, list[RunComparison]]:
    """Runs grouped by configuration, groups in the order their first run was given, each labelled by its model
    name plus the settings that tell apart groups of the same model."""
    keyed: dict[str, list[RunComparison]] = {}
    for run in runs:
        keyed.setdefault(configuration_key(run.config), []).append(run)
    settings = {key: _flat(json.loads(key)) for key in keyed}
    labels = {}
    for key, members in keyed.items():
        same_model = [k for k in keyed if keyed[k][0].model == members[0].model]
        differing = sorted({name for k in same_model for name, v in settings[k].items()
                            if any(settings[o].get(name) != v for o in same_model)} - {"model.name"})
        detail = ", ".join(f"{name.split('.')[-1]}={settings[key].get(name)}" for name in differing)
        labels[key] = f"{members[0].model} ({detail})" if detail else members[0].model
    return {labels[key]: members for key, members in keyed.items()}


def _flat(config: dict) -> dict:
    """{'model.width': 12, 'train.ratio': 1.75, ...} from the nested key."""
    return {f"{section}.{name}": value for section, values in config.items() for name, value in values.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (n-1; 0 for one value) of the finite values; NaN, NaN when none."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def per_case(members: list[RunComparison], metric: str) -> pd.Series:
    """case_id -> the metric averaged over the group's runs that scored the case (every run on a shared test
    split; one run per case when each run scored its own cases)."""
    frames = [run.cases.loc[:, ["case_id", metric]] for run in members
              if run.cases is not None and metric in run.cases]
    if not frames:
        return pd.Series(dtype=np.float64)
    rows = pd.concat(frames, ignore_index=True).astype({"case_id": str})
    return rows.groupby("case_id")[metric].mean()


@dataclass(frozen=True)
class PairedDifference:
    """Per-case differences of one metric, configuration b minus configuration a."""

    metric: str
    a: str
    b: str
    cases: int  # cases scored (finite) under both
    mean: float  # mean of b - a over those cases
    ci_low: float
    ci_high: float
    p_wilcoxon: float  # two-sided; NaN with fewer than one non-zero difference


def paired_difference(a: pd.Series, b: pd.Series, metric: str, names: tuple[str, str],
                      cfg: StatsConfig = StatsConfig()) -> PairedDifference:
    """Pair ``a`` and ``b`` (case_id -> value) by case; mean difference b - a, its bootstrap CI, Wilcoxon p."""
    joined = pd.concat({"a": a, "b": b}, axis=1, join="inner").astype(np.float64)
    joined = joined[np.isfinite(joined).all(axis=1)]  # an undefined score (NaN or inf) pairs with nothing
    differences = (joined["b"] - joined["a"]).to_numpy(dtype=np.float64)
    low, high = bootstrap_ci(differences, cfg)
    mean = float(differences.mean()) if differences.size else math.nan
    return PairedDifference(metric, *names, int(differences.size), mean, low, high, wilcoxon_p(differences))


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided p of scipy's Wilcoxon signed-rank test on paired differences (zeros dropped, scipy's default);
    NaN when every difference is zero or there are none (nothing to rank)."""
    from scipy.stats import wilcoxon

    if not np.any(differences != 0):
        return math.nan
    return float(wilcoxon(differences).pvalue)


def bootstrap_ci(differences: np.ndarray, cfg: StatsConfig = StatsConfig()) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: ``cfg.resamples`` resamples of the cases with replacement, drawn by
    ``numpy.random.default_rng(cfg.seed)``; (NaN, NaN) without cases."""
    if differences.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(cfg.seed)
    means = differences[rng.integers(0, differences.size, size=(cfg.resamples, differences.size))].mean(axis=1)
    tail = (1.0 - cfg.level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class CompareStats:
    """The statistics of one `ctmodel compare`: per configuration and per pair of configurations."""

    groups: pd.DataFrame  # one row per configuration: runs, <metric> mean and sd over runs, resources
    differences: list[PairedDifference]

    def group_rows(self) -> tuple[list[str], list[list[object]]]:
        """(columns, rows) of the per-configuration table, metrics as 'mean ± sd'."""
        columns = ["configuration", "runs", *METRICS, "parameters", "peak memory MB", "training min",
                   "inference s/case"]
        rows = [[name, int(r.runs), *(_pm(r[f"{m}_mean"], r[f"{m}_sd"]) for m in METRICS),
                 *(_pm(r[f"{k}_mean"], r[f"{k}_sd"]) for k in ("parameters", "peak_memory_mb", "training_min",
                                                            "inference_s"))] for name, r in self.groups.iterrows()]
        return columns, rows

    def difference_rows(self) -> tuple[list[str], list[list[object]]]:
        """(columns, rows) of the paired-difference table."""
        columns = ["metric", "A", "B", "cases", "mean B - A", "95 % CI", "Wilcoxon p"]
        rows = [[d.metric, d.a, d.b, d.cases, _num(d.mean), f"[{_num(d.ci_low)}, {_num(d.ci_high)}]",
                 _num(d.p_wilcoxon)] for d in self.differences]
        return columns, rows

    def markdown(self, title: str) -> str:
        """Both tables as GitHub Markdown under ``title``."""
        parts = [f"## {title}", "", "Per configuration: mean ± sd over runs.", "", markdown_table(*self.group_rows())]
        if self.differences:
            parts += ["", "Per-case paired differences (B - A), bootstrap CI of the mean, two-sided Wilcoxon "
                          "signed-rank p.", "", markdown_table(*self.difference_rows())]
        return "\n".join(parts) + "\n"

    def frame(self) -> pd.DataFrame:
        """One tidy table for the CSV: section (configuration / difference), names, metric, figures."""
        groups = [{"section": "configuration", "a": name, "metric": m, "n": int(r.runs), "mean": r[f"{m}_mean"],
                   "sd": r[f"{m}_sd"]} for name, r in self.groups.iterrows()
                  for m in (*METRICS, "parameters", "peak_memory_mb", "training_min", "inference_s")]
        pairs = [{"section": "difference", "a": d.a, "b": d.b, "metric": d.metric, "n": d.cases, "mean": d.mean,
                  "ci_low": d.ci_low, "ci_high": d.ci_high, "p_wilcoxon": d.p_wilcoxon} for d in self.differences]
        columns = ["section", "a", "b", "metric", "n", "mean", "sd", "ci_low", "ci_high", "p_wilcoxon"]
        return pd.DataFrame(groups + pairs).reindex(columns=columns)


def compare_stats(runs: list[RunComparison], cfg: StatsConfig = StatsConfig()) -> CompareStats:
    """Group the runs by configuration, summarise each group, and test every pair of groups per metric."""
    groups = group_runs(runs)
    table = pd.DataFrame([group_summary(members) for members in groups.values()], index=list(groups))
    differences = [paired_difference(per_case(groups[a], m), per_case(groups[b], m), m, (a, b), cfg)
                   for a, b in combinations(groups, 2) for m in METRICS]
    return CompareStats(table, differences)


def group_summary(members: list[RunComparison]) -> dict:
    """runs; per metric mean and sd over the runs' means; the same for parameters, peak memory, training
    minutes and network seconds per case."""
    row: dict[str, float] = {"runs": len(members)}
    for metric in METRICS:
        row[f"{metric}_mean"], row[f"{metric}_sd"] = mean_sd([r.summary["metrics"].get(metric, {}).get("mean")
                                                             for r in members])
    resources = {"parameters": [r.training.get("parameters") for r in members],
                 "peak_memory_mb": [r.training.get("peak_memory_mb") for r in members],
                 "training_min": [None if r.training.get("train_seconds") is None
                                  else r.training["train_seconds"] / 60.0 for r in members],
                 "inference_s": [r.summary.get("network_seconds_per_case") for r in members]}
    for name, values in resources.items():
        row[f"{name}_mean"], row[f"{name}_sd"] = mean_sd(values)
    return row


def write_outputs(stats: CompareStats, out: Path, title: str) -> tuple[Path, Path]:
    """OUT.md and OUT.csv (any suffix of ``out`` is replaced), each via temp file + rename."""
    md, csv = Path(out).with_suffix(".md"), Path(out).with_suffix(".csv")
    md.parent.mkdir(parents=True, exist_ok=True)
    write_text(md, stats.markdown(title))
    write_text(csv, stats.frame().to_csv(index=False))
    return md, csv


def plot_metrics(runs: list[RunComparison], out_dir: Path) -> list[Path]:
    """One PNG per metric in ``out_dir``: a box per configuration over its per-case values, with the cases as
    jittered points (seeded). Each figure has its own Agg canvas; pyplot's global state is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = group_runs(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in METRICS:
        values = [per_case(members, metric).dropna().to_numpy() for members in groups.values()]
        fig = Figure(figsize=(1.8 + 1.6 * len(values), 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.boxplot(values, showfliers=False)
        jitter = np.random.default_rng(0)
        for position, points in enumerate(values, start=1):
            ax.plot(position + jitter.uniform(-0.15, 0.15, points.size), points, "o", alpha=0.6, markersize=4)
        ax.set_xticks(range(1, len(values) + 1), list(groups), rotation=15, ha="right")
        ax.set_ylabel(f"{metric} (per case)")
        ax.grid(alpha=0.3, axis="y")
        path = out_dir / f"compare-{metric}.png"
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100)
        paths.append(path)
    return paths


def _pm(mean: float, sd: float) -> str:
    """'mean ± sd', '-' when the mean is missing."""
    return "-" if math.isnan(mean) else f"{_num(mean)} ± {_num(sd)}"


def _num(value: float) -> str:
    """Four significant decimals for the tables; '-' for NaN."""
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def markdown_table(columns: list[str] | tuple[str, ...], rows: list[list[object]]) -> str:
    """A GitHub Markdown table (compare's --out .md, benchmarks/study.py, benchmarks/raters.py)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])
