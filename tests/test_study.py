"""benchmarks/study.py at its tiniest: 2 folds, 1 epoch, 2 configurations on a few tiny realistic demo cases. The
tables carry both configurations with finite Dice and a p-value column; a second invocation trains nothing (it
resumes a run without summary.json and skips the finished ones)."""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctprep.errors import UsageError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--cases", "5", "--demo-size", "48", "--max-slices", "6", "--size", "32", "--folds", "2", "--epochs", "1",
        "--batch-size", "8", "--only", "unet2d,dual-encoder", "--resamples", "50", "--device", "cpu"]


@pytest.fixture
def study(monkeypatch):
    """benchmarks/study.py imported as the script runs (its folder first on sys.path, for its sibling imports)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    torch.set_num_threads(1)
    module = importlib.import_module("study")
    yield module
    sys.modules.pop("study", None)


def test_tiny_study_tabulates_both_configurations_and_resumes(study, tmp_path, capsys):
    out = tmp_path / "study"
    tables = study.main([*TINY, "--out", str(out)])
    assert [(t.table, t.split) for t in tables] == [("table-5.2", "val"), ("table-5.2", "test")]  # 1 table shown
    for t in tables:
        assert [r[0] for r in t.rows] == ["unet2d", "dual-encoder"] and t.reference == "dual-encoder"
        dice = [float(r[2].split(" ± ")[0]) for r in t.rows]
        assert all(math.isfinite(d) for d in dice)
        assert {d[0] for d in t.differences} == {"unet2d"}  # every difference is B - reference
    saved = pd.read_csv(out / "study.csv")
    assert "Wilcoxon p" in saved.columns and set(saved["configuration"]) == {"unet2d", "dual-encoder"}
    assert (out / "table-5-2-test.md").exists() and (out / "table-5-2-out-of-fold.csv").exists()
    assert sorted(p.parent.name + "/" + p.name for p in (out / "runs").glob("*/*")) == [
        "dual-encoder/fold-0", "dual-encoder/fold-1", "unet2d/fold-0", "unet2d/fold-1"]
    capsys.readouterr()

    (out / "runs" / "unet2d" / "fold-0" / "summary.json").unlink()  # as if cut short after its last epoch
    again = study.main([*TINY, "--out", str(out)])
    assert "'trained': 0, 'resumed': 1, 'skipped': 3" in capsys.readouterr().out
    assert [t.rows for t in again] == [t.rows for t in tables]  # the saved evaluations are re-used as they were


def test_unknown_or_unbuildable_configurations_fail_before_any_work(study, tmp_path):
    with pytest.raises(UsageError, match="expected names from"):
        study.main(["--only", "unet4d", "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()


def test_unet3d_is_in_table_5_2_with_patches_as_deep_as_the_study_says(study):
    assert "unet3d" in study.TABLES["table-5.2"] and [c.name for c in study.selected("unet3d")] == ["unet3d"]
    args = study.parse_args(["--quick", "--patch-depth", "6"])
    unet3d, = study.selected("unet3d")
    assert study.model_config(args, unet3d).patch_depth == 6
    quick = study.parse_args(["--quick"])
    assert study.model_config(quick, unet3d).patch_depth == quick.batch_size  # one patch per step: the same slices


def test_folds_are_dealt_evenly_after_the_test_share(study):
    cases = [f"c{i}" for i in range(12)]
    dealt = study.deal(cases, folds=3, seed=0)
    test = [c for c, (split, _) in dealt.items() if split == "test"]
    assert len(test) == round(study.TEST_SHARE * 12)
    sizes = pd.Series([k for split, k in dealt.values() if split == "train"]).value_counts()
    assert sorted(sizes.index) == [0, 1, 2] and sizes.max() - sizes.min() <= 1
    assert study.deal(cases[::-1], folds=3, seed=0) == dealt  # the seeded order, not the order given
    with pytest.raises(UsageError, match="raise --cases"):
        study.deal(cases[:3], folds=3, seed=0)


def test_a_different_study_in_the_same_folder_is_refused(study, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "data.json").write_text('{"cases": 99}')
    with pytest.raises(UsageError, match="another --out"):
        study.main([*TINY, "--out", str(out)])
