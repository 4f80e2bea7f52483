"""ctmodel compare's statistics: groups by configuration, mean ± sd over runs, paired per-case differences with
scipy's Wilcoxon signed-rank p and a seeded bootstrap CI; Markdown, CSV and PNG outputs."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from cli import model_app
from conftest import one_line_error
from ctmodel.checkpoint import atomic_save, checkpoint_payload
from ctmodel.compare import RunComparison
from ctmodel.compare_stats import (StatsConfig, bootstrap_ci, compare_stats, configuration_key, group_runs,
                                   paired_difference, plot_metrics, write_outputs)
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.nets import build_model
from ctprep.errors import UsageError
from ctprep.store import StoreLayout


def fake_run(name: str, model: str, scores: dict[str, float], seed: int = 0, fold: int | None = None,
             **train: object) -> RunComparison:
    """A compared run without a network: its config, per-case Dice (IoU, NSD, HD95 derived) and run-level means."""
    cases = pd.DataFrame({"case_id": list(scores), "dice": list(scores.values())})
    cases["iou"], cases["nsd"], cases["hd95_mm"] = cases["dice"] / 2, cases["dice"], 10 * cases["dice"]
    summary = {"metrics": {m: {"mean": float(cases[m].mean())} for m in ("dice", "iou", "nsd", "hd95_mm")},
               "network_seconds_per_case": 0.5}
    config = {"model": asdict(ModelConfig(name=model)), "train": asdict(TrainConfig(seed=seed, fold=fold, **train))}
    return RunComparison(Path(name), summary, {"parameters": 100, "train_seconds": 60.0 * (1 + seed)}, model,
                         False, config, cases)


def test_wilcoxon_p_on_five_positive_differences_is_two_in_thirty_two():
    """All five signs positive: under H0 each sign is a coin flip, so the two-sided exact p is 2 / 2**5."""
    a = pd.Series([0.5, 0.6, 0.7, 0.8, 0.9], index=list("abcde"))
    b = a + [0.01, 0.02, 0.03, 0.04, 0.05]
    result = paired_difference(a, b, "dice", ("A", "B"))
    assert result.p_wilcoxon == pytest.approx(2 / 32) == wilcoxon(b.to_numpy(), a.to_numpy()).pvalue
    assert result.cases == 5 and result.mean == pytest.approx(0.03)


def test_wilcoxon_p_with_mixed_signs_equals_scipy_and_the_exact_count():
    """Differences 1.5, -0.5, 2, 3, -1, 2.5 rank 3, 1, 4, 6, 2, 5: W- = 3; the subsets of ranks 1..6 summing to
    at most 3 are {}, {1}, {2}, {3}, {1, 2}, so p = 2 * 5 / 2**6."""
    a = pd.Series(np.zeros(6), index=[f"c{i}" for i in range(6)])
    b = pd.Series([1.5, -0.5, 2.0, 3.0, -1.0, 2.5], index=a.index)
    result = paired_difference(a, b, "dice", ("A", "B"))
    assert result.p_wilcoxon == pytest.approx(10 / 64) == wilcoxon(b.to_numpy() - a.to_numpy()).pvalue


def test_pairing_is_by_case_id_over_cases_scored_under_both():
    a = pd.Series({"x": 0.1, "y": 0.2, "z": 0.3})
    b = pd.Series({"z": 0.5, "y": 0.6, "w": 0.9})
    result = paired_difference(a, b, "dice", ("A", "B"))
    assert result.cases == 2 and result.mean == pytest.approx(((0.6 - 0.2) + (0.5 - 0.3)) / 2)


def test_all_zero_differences_have_no_wilcoxon_p():
    same = pd.Series({"x": 0.5, "y": 0.7})
    assert np.isnan(paired_difference(same, same, "dice", ("A", "B")).p_wilcoxon)


def test_bootstrap_ci_of_a_constant_difference_is_that_constant():
    assert bootstrap_ci(np.full(7, 0.25)) == pytest.approx((0.25, 0.25))


def test_bootstrap_ci_of_many_normal_differences_matches_the_normal_approximation():
    """n = 400: the percentile CI is close to mean ± 1.96 sd / sqrt(n); the same seed gives the same CI."""
    d = np.random.default_rng(1).normal(0.1, 0.2, 400)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    low, high = bootstrap_ci(d, StatsConfig(seed=3))
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert bootstrap_ci(d, StatsConfig(seed=3)) == (low, high)


def test_bad_resamples_are_refused():
    with pytest.raises(UsageError, match="--resamples 0"):
        StatsConfig(resamples=0)


def test_runs_differing_only_in_seed_or_fold_share_a_configuration():
    base = fake_run("a", "unet2d", {"x": 0.5})
    assert configuration_key(base.config) == configuration_key(fake_run("b", "unet2d", {}, seed=4, fold=2).config)
    assert configuration_key(base.config) != configuration_key(fake_run("c", "unet2d", {}, ratio=0.0).config)
    groups = group_runs([base, fake_run("c", "unet2d", {}, ratio=0.0), fake_run("d", "dual-encoder", {})])
    assert list(groups) == ["unet2d (ratio=1.75)", "unet2d (ratio=0.0)", "dual-encoder"]


def test_folds_of_two_configurations_pair_over_the_union_of_their_cases():
    """Two folds per configuration, each fold scoring its own two cases: four pairs, mean ± sd over the folds."""
    unet = [fake_run("u0", "unet2d", {"p": 0.50, "q": 0.60}, fold=0),
            fake_run("u1", "unet2d", {"r": 0.70, "s": 0.40}, fold=1, seed=1)]
    dual = [fake_run("d0", "dual-encoder", {"p": 0.55, "q": 0.70}, fold=0),
            fake_run("d1", "dual-encoder", {"r": 0.72, "s": 0.60}, fold=1)]
    stats = compare_stats(unet + dual, StatsConfig(resamples=2000))
    assert stats.groups.loc["unet2d", "runs"] == 2
    assert stats.groups.loc["unet2d", "dice_mean"] == pytest.approx(statistics.mean([0.55, 0.55]))
    assert stats.groups.loc["unet2d", "training_min_mean"] == pytest.approx(1.5)
    assert stats.groups.loc["unet2d", "training_min_sd"] == pytest.approx(statistics.stdev([1.0, 2.0]))
    dice = next(d for d in stats.differences if d.metric == "dice")
    d = np.array([0.55 - 0.50, 0.70 - 0.60, 0.72 - 0.70, 0.60 - 0.40])
    assert (dice.a, dice.b, dice.cases) == ("unet2d", "dual-encoder", 4)
    assert dice.mean == pytest.approx(d.mean())
    assert dice.p_wilcoxon == pytest.approx(wilcoxon(d).pvalue)
    assert d.min() <= dice.ci_low <= dice.mean <= dice.ci_high <= d.max()


def test_markdown_csv_and_plots_are_written(tmp_path):
    runs = [fake_run("u", "unet2d", {"p": 0.5, "q": 0.6, "r": 0.2}),
            fake_run("d", "dual-encoder", {"p": 0.6, "q": 0.7, "r": 0.4})]
    stats = compare_stats(runs, StatsConfig(resamples=100))
    md, csv = write_outputs(stats, tmp_path / "out" / "cv", "cv on store")
    assert "| unet2d | 1 | 0.4333 ± 0 |" in md.read_text()
    table = pd.read_csv(csv)
    assert set(table["section"]) == {"configuration", "difference"}
    assert table.query("section == 'difference' and metric == 'dice'")["mean"].item() == pytest.approx(0.4 / 3)
    pngs = plot_metrics(runs, tmp_path / "figs")
    assert [p.name for p in pngs] == ["compare-dice.png", "compare-iou.png", "compare-nsd.png",
                                      "compare-hd95_mm.png", "compare-fp_rate.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def _save_run(run_dir: Path, seed: int, fold: int | None = None) -> Path:
    """A run folder with a small random network whose config.json records seed and fold."""
    torch.manual_seed(seed)
    model_cfg = ModelConfig(width=4, depth=2)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": asdict(model_cfg),
                                                     "train": asdict(TrainConfig(seed=seed, fold=fold))}))
    payload = checkpoint_payload(build_model(model_cfg), model_cfg, StoreLayout(size=16), epoch=1, state={})
    atomic_save(payload, run_dir / "best.pt")
    return run_dir


def test_cli_groups_seeds_and_writes_statistics(tmp_path, tiny_store):
    runs = [_save_run(tmp_path / f"seed{s}", seed=s) for s in (0, 1)]
    result = CliRunner().invoke(model_app, ["compare", *map(str, runs), str(tiny_store), "--device", "cpu",
                                            "--out", str(tmp_path / "cv"), "--plot", str(tmp_path / "figs"),
                                            "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert "per configuration" in result.output and (tmp_path / "cv.md").exists() and (tmp_path / "cv.csv").exists()
    assert (tmp_path / "figs" / "compare-dice.png").exists()


def test_cli_refuses_a_fold_run_on_the_train_split(tmp_path, tiny_store):
    run = _save_run(tmp_path / "fold0", seed=0, fold=0)  # it trained on the other folds: scores there are inflated
    result = CliRunner().invoke(model_app, ["compare", str(run), str(tiny_store), "--split", "train"])
    assert result.exit_code == 1 and "expected --split test or val" in one_line_error(result)


def test_a_case_without_a_finite_score_pairs_with_nothing():
    a = pd.Series({"x": 1.0, "y": float("inf"), "z": 3.0})
    b = pd.Series({"x": 2.0, "y": 5.0, "z": float("nan")})
    assert paired_difference(a, b, "hd95_mm", ("A", "B")).cases == 1
