"""`ctsample split`: reassign patients to train / val / test (and cross-validation folds) in the store's index,
atomically."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctprep.index import read_index, write_index
from ctprep.location import open_location, require_local
from ctprep.lock import store_lock
from ctprep.splits import (NO_FOLD, SPLITS, FoldConfig, SplitConfig, assign_folds, assign_splits, read_split_csv,
                           split_counts, unlabeled_cases)
from ctprep.store import root_attrs, update_root_attrs


@dataclass(frozen=True)
class SplitReport:
    """What a resplit did: per-split counts before and after, and the warnings to show."""

    counts: pd.DataFrame  # per split (train, val, test): <count>_before and <count>_after, see split_counts
    unknown: list[str]  # the CSV's case ids that the store does not hold
    warnings: list[str]  # one line each: unknown CSV cases, a held-out split or a fold left empty
    folds: pd.DataFrame | None = None  # per fold 0..K-1: patients, slices, lesion slices; None without folds

    def rows(self) -> list[tuple[str, int, int, int, int, int, int]]:
        """(split, patients before, patients, labeled, unlabeled, slices, lesion slices) per split."""
        return [(str(name), int(r.patients_before), int(r.patients_after), int(r.labeled_after),
                 int(r.unlabeled_after), int(r.slices_after), int(r.lesion_after)) for name, r in self.counts.iterrows()]

    def fold_rows(self) -> list[tuple[int, int, int, int]]:
        """(fold, patients, slices, lesion slices) per fold; empty without folds."""
        if self.folds is None:
            return []
        return [(int(k), int(r.patients), int(r.slices), int(r.lesion)) for k, r in self.folds.iterrows()]


def resplit(store_path: Path, cfg: SplitConfig, folds: int | None = None) -> SplitReport:
    """Rewrite the index's split and fold columns per patient under the store lock; record both rules for later
    converts. ``folds`` None keeps the store's recorded number of folds (with this call's seed and CSV)."""
    store_path = require_local(open_location(store_path), "ctsample split")
    with store_lock(store_path):
        index = read_index(store_path)
        recorded = root_attrs(store_path).get("fold_config")
        fold_cfg = FoldConfig(folds=FoldConfig.from_attrs(recorded).folds if folds is None else folds,
                              seed=cfg.seed, csv=cfg.csv)
        before = split_counts(index).reindex(list(SPLITS), fill_value=0)
        case_ids = sorted(index["case_id"].astype(str).unique())
        unknown = sorted(set(read_split_csv(cfg.csv)) - set(case_ids)) if cfg.csv is not None else []
        splits = assign_splits(case_ids, cfg, unlabeled=unlabeled_cases(index))
        index["split"] = index["case_id"].astype(str).map(splits).astype("string")
        case_folds = assign_folds(splits, fold_cfg, unlabeled_cases(index))
        index["fold"] = index["case_id"].astype(str).map(case_folds).astype("int16")
        write_index(store_path, index)
        folds_attr = {"fold_config": fold_cfg.to_attrs()} if fold_cfg.folds or recorded else {}  # none: as before
        update_root_attrs(store_path, {"split_config": cfg.to_attrs(), **folds_attr})  # unchanged: not rewritten
    after = split_counts(index).reindex(list(SPLITS), fill_value=0)
    counts = before.add_suffix("_before").join(after.add_suffix("_after"))
    per_fold = fold_counts(index, fold_cfg.folds)
    return SplitReport(counts, unknown, split_warnings(counts, unknown, cfg) + fold_warnings(per_fold), per_fold)


def fold_counts(index: pd.DataFrame, folds: int) -> pd.DataFrame | None:
    """Per fold 0..K-1: patients, slices and lesion slices (None when there are no folds)."""
    if folds == 0:
        return None
    rows = index[index["fold"] != NO_FOLD]
    counts = rows.groupby("fold").agg(patients=("case_id", "nunique"), slices=("slice", "size"),
                                      lesion=("has_lesion", "sum"))
    return counts.reindex(range(folds), fill_value=0).rename_axis("fold")


def fold_warnings(per_fold: pd.DataFrame | None) -> list[str]:
    """One line per fold without a patient (too few labeled non-test patients for K folds)."""
    if per_fold is None:
        return []
    empty = [int(k) for k, n in per_fold["patients"].items() if n == 0]
    return [f"folds {empty} hold no patient ({int(per_fold['patients'].sum())} labeled non-test patients in "
            f"{len(per_fold)} folds): `ctmodel train --fold` would have nothing to validate on; pass fewer --folds"
            ] if empty else []


def split_warnings(counts: pd.DataFrame, unknown: list[str], cfg: SplitConfig) -> list[str]:
    """Unknown case ids in the CSV, and a val or test split the hash left without a labeled patient."""
    lines = [f"{cfg.csv}: {len(unknown)} case ids not in the store, e.g. {unknown[:3]}"] if unknown else []
    for name, fraction in (("test", cfg.test), ("val", cfg.val)):
        if fraction > 0 and cfg.csv is None and counts.loc[name, "labeled_after"] == 0:
            lines.append(f"the {name} split is empty ({int(counts['labeled_after'].sum())} labeled patients, "
                         f"--{name} {fraction:g}): try another --seed, or list the cases in --splits FILE.csv")
    return lines
