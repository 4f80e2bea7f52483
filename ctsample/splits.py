"""Patient-level split assignment: a hash of (seed, case_id), so adding cases never moves existing ones."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ctprep.errors import UsageError

SPLITS = ("train", "val", "test")


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


def split_of(case_id: str, cfg: SplitConfig) -> str:
    """The split of one case from a hash of (seed, case_id): independent of every other case."""
    digest = hashlib.sha256(f"{cfg.seed}:{case_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.test:
        return "test"
    if u < cfg.test + cfg.val * (1.0 - cfg.test):
        return "val"
    return "train"


def assign_splits(case_ids: list[str], cfg: SplitConfig) -> dict[str, str]:
    """case_id -> split for every case; the CSV (if any) overrides the hash for the cases it lists."""
    overrides = read_split_csv(cfg.csv) if cfg.csv is not None else {}
    return {case_id: overrides.get(case_id) or split_of(case_id, cfg) for case_id in case_ids}


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
        if len(fields) != 2 or fields[1] not in SPLITS:
            raise UsageError(f"{path}:{number}: expected 'case_id,split' with split in {SPLITS}, found {line!r}")
        result[fields[0]] = fields[1]
    return result
