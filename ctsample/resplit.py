"""`ctsample split`: reassign patients to train / val / test in the store's index, atomically."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctprep.index import read_index, write_index
from ctprep.lock import store_lock
from ctprep.splits import SPLITS, SplitConfig, assign_splits, read_split_csv, split_counts, unlabeled_cases
from ctprep.store import update_root_attrs


@dataclass(frozen=True)
class SplitReport:
    """What a resplit did: per-split counts before and after, and the warnings to show."""

    counts: pd.DataFrame  # per split (train, val, test): <count>_before and <count>_after, see split_counts
    unknown: list[str]  # the CSV's case ids that the store does not hold
    warnings: list[str]  # one line each: unknown CSV cases, a held-out split left empty

    def rows(self) -> list[tuple[str, int, int, int, int, int, int]]:
        """(split, patients before, patients, labeled, unlabeled, slices, lesion slices) per split."""
        return [(str(name), int(r.patients_before), int(r.patients_after), int(r.labeled_after),
                 int(r.unlabeled_after), int(r.slices_after), int(r.lesion_after)) for name, r in self.counts.iterrows()]


def resplit(store_path: Path, cfg: SplitConfig) -> SplitReport:
    """Rewrite the index's split column per patient under the store lock; record the rule for later converts."""
    store_path = Path(store_path)
    with store_lock(store_path):
        index = read_index(store_path)
        before = split_counts(index).reindex(list(SPLITS), fill_value=0)
        case_ids = sorted(index["case_id"].astype(str).unique())
        unknown = sorted(set(read_split_csv(cfg.csv)) - set(case_ids)) if cfg.csv is not None else []
        splits = assign_splits(case_ids, cfg, unlabeled=unlabeled_cases(index))
        index["split"] = index["case_id"].astype(str).map(splits).astype("string")
        write_index(store_path, index)
        update_root_attrs(store_path, {"split_config": cfg.to_attrs()})  # unchanged: not rewritten
    after = split_counts(index).reindex(list(SPLITS), fill_value=0)
    counts = before.add_suffix("_before").join(after.add_suffix("_after"))
    return SplitReport(counts, unknown, split_warnings(counts, unknown, cfg))


def split_warnings(counts: pd.DataFrame, unknown: list[str], cfg: SplitConfig) -> list[str]:
    """Unknown case ids in the CSV, and a val or test split the hash left without a labeled patient."""
    lines = [f"{cfg.csv}: {len(unknown)} case ids not in the store, e.g. {unknown[:3]}"] if unknown else []
    for name, fraction in (("test", cfg.test), ("val", cfg.val)):
        if fraction > 0 and cfg.csv is None and counts.loc[name, "labeled_after"] == 0:
            lines.append(f"the {name} split is empty ({int(counts['labeled_after'].sum())} labeled patients, "
                         f"--{name} {fraction:g}): try another --seed, or list the cases in --splits FILE.csv")
    return lines
