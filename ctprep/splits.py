"""Patient-level splits, owned here: the split names, the rule (SplitConfig, as stored in the root attribute
``split_config``), the assignment (a hash of (seed, case_id), so adding cases never moves existing ones) and the
per-split counts that ``ctprep info`` and ``ctsample split`` print.

Only labeled cases take val and test places (an unlabeled case has no mask to score against); unlabeled cases go
to train, where a plan skips them and later semi-supervised work can use them.

Cross-validation folds (FoldConfig, root attribute ``fold_config``, index column ``fold``) partition the labeled
non-test cases (train and val together) into K folds by another hash of (seed, case_id); every other case has
fold -1. ``fold_view`` relabels an index for `ctmodel train --fold k`: fold k becomes val, the other folds train.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ctprep.errors import UsageError

SPLITS = ("train", "val", "test")  # the split names, in display order
SPLIT_CHOICES = (*SPLITS, "all")  # what a --split option accepts


def csv_attr(csv: Path | None) -> str | None:
    """An override CSV as recorded in a root attribute: its absolute path, or None."""
    return None if csv is None else str(Path(csv).absolute())


def csv_path(value: str | None) -> Path | None:
    """The override CSV of a root attribute back as a Path (None when there is none)."""
    return Path(value) if value else None


@dataclass(frozen=True)
class SplitConfig:
    """How cases are assigned to train / val / test."""

    test: float = 0.2  # fraction of patients held out for the final figures
    val: float = 0.1  # fraction of the remaining patients used for model selection
    seed: int = 0
    csv: Path | None = None  # case_id,split file that overrides the hash (official challenge lists)

    def __post_init__(self) -> None:
        for name in ("test", "val"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UsageError(f"--{name} {value}: expected a fraction in [0, 1)")

    @classmethod
    def from_options(cls, test: float | None = None, val: float | None = None, seed: int | None = None,
                     csv: Path | None = None) -> "SplitConfig | None":
        """The config the command-line options give, defaults filled in; None when no option is given (a store
        then keeps the config it recorded)."""
        given = {name: value for name, value in (("test", test), ("val", val), ("seed", seed), ("csv", csv))
                 if value is not None}
        return cls(**given) if given else None

    def to_attrs(self) -> dict:
        """The root attribute ``split_config``: {test, val, seed, csv (absolute path or null)}."""
        return {"test": self.test, "val": self.val, "seed": self.seed, "csv": csv_attr(self.csv)}

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "SplitConfig":
        """Read the config back from the root attribute (the default config when the store has none yet)."""
        if not attrs:
            return cls()
        return cls(test=float(attrs["test"]), val=float(attrs["val"]), seed=int(attrs["seed"]),
                   csv=csv_path(attrs.get("csv")))


def check_split_choice(split: str) -> None:
    """UsageError unless ``split`` is one a --split option accepts (train, val, test or all)."""
    if split not in SPLIT_CHOICES:
        raise UsageError(f"--split {split}: expected one of {', '.join(SPLIT_CHOICES)}")


def split_of(case_id: str, cfg: SplitConfig) -> str:
    """The split of one case from a hash of (seed, case_id): independent of every other case."""
    digest = hashlib.sha256(f"{cfg.seed}:{case_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.test:
        return "test"
    if u < cfg.test + cfg.val * (1.0 - cfg.test):
        return "val"
    return "train"


def assign_splits(case_ids: Iterable[str], cfg: SplitConfig, unlabeled: Collection[str] = ()) -> dict[str, str]:
    """case_id -> split for every case: the hash for labeled cases, train for ``unlabeled`` ones, the CSV over both.

    Raises:
        UsageError: the CSV puts an unlabeled case in val or test (it could never be scored there).
    """
    overrides = read_split_csv(cfg.csv) if cfg.csv is not None else {}
    unlabeled = set(unlabeled)
    check_unlabeled_overrides(overrides, unlabeled, cfg.csv)
    return {case_id: overrides.get(case_id) or ("train" if case_id in unlabeled else split_of(case_id, cfg))
            for case_id in case_ids}


def check_unlabeled_overrides(overrides: dict[str, str], unlabeled: set[str], csv: Path | None) -> None:
    """Refuse a CSV that lists an unlabeled case as val or test, naming the cases."""
    held_out = sorted(case_id for case_id, split in overrides.items() if case_id in unlabeled and split != "train")
    if held_out:
        shown = ", ".join(f"{c} ({overrides[c]})" for c in held_out[:3]) + (", ..." if len(held_out) > 3 else "")
        raise UsageError(f"{csv}: expected labeled cases in val/test, found {len(held_out)} unlabeled (no mask): "
                         f"{shown}; list them as train or drop their lines")


def read_split_csv(path: Path) -> dict[str, str]:
    """Read a ``case_id,split`` CSV (header optional); raises naming the file and line on bad rows."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: split file not found; pass a CSV of case_id,split")
    result: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (number == 1 and fields[:2] == ["case_id", "split"]):
            continue
        if len(fields) not in (2, 3) or fields[1] not in SPLITS:
            raise UsageError(f"{path}:{number}: expected 'case_id,split[,fold]' with split in {SPLITS}, "
                             f"found {line!r}")
        result[fields[0]] = fields[1]
    return result


NO_FOLD = -1  # the fold of a test, unlabeled or fold-less case


@dataclass(frozen=True)
class FoldConfig:
    """How labeled non-test cases are dealt into K cross-validation folds (0 folds: none)."""

    folds: int = 0  # K; 0 = no folds (every case has fold -1)
    seed: int = 0  # shared with the split hash's seed by `ctsample split --seed`
    csv: Path | None = None  # the split CSV; its optional third column (fold) overrides the hash

    def __post_init__(self) -> None:
        if self.folds < 0 or self.folds == 1:
            raise UsageError(f"--folds {self.folds}: expected 0 (no folds) or 2 or more folds")

    def to_attrs(self) -> dict:
        """The root attribute ``fold_config``: {folds, seed, csv (absolute path or null)}."""
        return {"folds": self.folds, "seed": self.seed, "csv": csv_attr(self.csv)}

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> "FoldConfig":
        """Read the config back from the root attribute (no folds when the store has none)."""
        if not attrs:
            return cls()
        return cls(folds=int(attrs["folds"]), seed=int(attrs["seed"]), csv=csv_path(attrs.get("csv")))


def fold_of(case_id: str, cfg: FoldConfig) -> int:
    """The fold of one case from a hash of (seed, case_id), independent of every other case (and of its split)."""
    digest = hashlib.sha256(f"fold:{cfg.seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % cfg.folds


def assign_folds(splits: dict[str, str], cfg: FoldConfig, unlabeled: Collection[str] = ()) -> dict[str, int]:
    """case_id -> fold: the hash (or the CSV's fold column) for labeled non-test cases, NO_FOLD for the others.

    Raises:
        UsageError: the CSV gives a fold outside 0..K-1, or a fold to a test or unlabeled case.
    """
    unlabeled = set(unlabeled)
    if cfg.folds == 0:
        return {case_id: NO_FOLD for case_id in splits}
    overrides = read_fold_csv(cfg.csv) if cfg.csv is not None else {}
    for case_id, fold in overrides.items():
        if not 0 <= fold < cfg.folds:
            raise UsageError(f"{cfg.csv}: case {case_id!r} has fold {fold}, expected 0..{cfg.folds - 1} "
                             f"(--folds {cfg.folds}); fix the fold column or pass another --folds")
        if splits.get(case_id) == "test" or case_id in unlabeled:
            raise UsageError(f"{cfg.csv}: case {case_id!r} has fold {fold}, expected no fold for a test or "
                             "unlabeled case; leave its fold column empty")
    return {case_id: NO_FOLD if split == "test" or case_id in unlabeled
            else overrides.get(case_id, fold_of(case_id, cfg)) for case_id, split in splits.items()}


def read_fold_csv(path: Path) -> dict[str, int]:
    """The optional third column of a ``case_id,split[,fold]`` CSV: case_id -> fold for rows that give one."""
    result: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[2] or (number == 1 and fields[2] == "fold"):
            continue
        try:
            result[fields[0]] = int(fields[2])
        except ValueError as err:
            raise UsageError(f"{path}:{number}: expected an integer fold in the third column, found {line!r}") from err
    return result


def fold_count(index: pd.DataFrame) -> int:
    """K: the number of folds the index records (0 when it has none)."""
    return int(index["fold"].max()) + 1 if len(index) and "fold" in index else 0


def fold_view(index: pd.DataFrame, fold: int, store_path: Path) -> pd.DataFrame:
    """The index as `ctmodel train --fold k` sees it: fold k is val, the other folds train, test and fold-less
    cases unchanged (the store's own val split plays no part; unlabeled cases stay in train, unplanned).

    Raises:
        UsageError: the store has no folds, or no fold ``fold``.
    """
    k = fold_count(index)
    if k == 0:
        raise UsageError(f"{store_path}: --fold {fold}: expected a store with folds, found none; make them with "
                         f"`ctsample split {store_path} --folds 5`")
    if not 0 <= fold < k:
        raise UsageError(f"{store_path}: --fold {fold}: expected a fold in 0..{k - 1} (the store has {k} folds)")
    folded = index["fold"] >= 0
    view = index.copy()
    view["split"] = view["split"].where(~folded, "train").where(index["fold"] != fold, "val").astype("string")
    return view


def unlabeled_cases(index: pd.DataFrame) -> set[str]:
    """Case ids of the index's unlabeled (mask-less) cases."""
    return set(index.loc[~index["labeled"].astype(bool), "case_id"].astype(str))


def split_counts(index: pd.DataFrame) -> pd.DataFrame:
    """Per split present (train, val, test first, then any other name sorted): patients, labeled and unlabeled
    patients, slices and lesion slices."""
    per_case = index.groupby("case_id").agg(split=("split", "first"), labeled=("labeled", "first"),
                                            slices=("slice", "size"), lesion=("has_lesion", "sum"))
    counts = per_case.groupby("split").agg(patients=("labeled", "size"), labeled=("labeled", "sum"),
                                           slices=("slices", "sum"), lesion=("lesion", "sum"))
    present = set(counts.index.astype(str))
    order = [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))
    counts = counts.set_axis(counts.index.astype(str)).reindex(order).astype(int)
    counts.insert(2, "unlabeled", counts["patients"] - counts["labeled"])
    return counts
