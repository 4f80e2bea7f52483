"""`ctsample split`: reassign patients to train / val / test in the store's index, atomically."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctprep.convert import split_config_to_attrs
from ctprep.index import SPLITS, read_index, write_index
from ctprep.lock import store_lock
from ctprep.store import update_root_attrs
from ctsample.splits import SplitConfig, assign_splits, read_split_csv


def resplit(store_path: Path, cfg: SplitConfig) -> tuple[pd.DataFrame, list[str]]:
    """Rewrite the index's split column per patient under the store lock; record the rule for later converts.

    Returns the per-split counts (before and after) and the CSV's case ids that the store does not hold.
    """
    store_path = Path(store_path)
    with store_lock(store_path):
        index = read_index(store_path)
        before = split_counts(index)
        case_ids = sorted(index["case_id"].astype(str).unique())
        unknown = sorted(set(read_split_csv(cfg.csv)) - set(case_ids)) if cfg.csv is not None else []
        splits = assign_splits(case_ids, cfg, unlabeled=unlabeled_cases(index))
        index["split"] = index["case_id"].astype(str).map(splits).astype("string")
        write_index(store_path, index)
        update_root_attrs(store_path, {"split_config": split_config_to_attrs(cfg)})  # unchanged: not rewritten
    after = split_counts(index)
    return before.add_suffix("_before").join(after.add_suffix("_after")), unknown


def unlabeled_cases(index: pd.DataFrame) -> set[str]:
    """Case ids of the index's unlabeled (mask-less) cases."""
    return set(index.loc[~index["labeled"].astype(bool), "case_id"].astype(str))


def split_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Patients, labeled and unlabeled patients, slices and lesion slices per split (train, val, test)."""
    per_case = index.groupby("case_id").agg(split=("split", "first"), labeled=("labeled", "first"),
                                            slices=("slice", "size"), lesion=("has_lesion", "sum"))
    counts = per_case.groupby("split").agg(patients=("labeled", "size"), labeled=("labeled", "sum"),
                                           slices=("slices", "sum"), lesion=("lesion", "sum"))
    counts = counts.reindex(list(SPLITS), fill_value=0).astype(int)
    counts.insert(2, "unlabeled", counts["patients"] - counts["labeled"])
    return counts
