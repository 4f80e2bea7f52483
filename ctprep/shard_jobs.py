"""`ctprep convert --shard i/N`: which cases one of N independent convert jobs (a SLURM job array) takes.

Shares are 1-based, like ``sbatch --array=1-N``'s task ids: job i of N takes the cases at positions i-1, i-1+N,
i-1+2N, ... of the case ids sorted, so every case goes to exactly one job and shares differ by at most one case.
Every job finds the same cases in RAW, so the shares agree without talking to each other.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ctprep.errors import UsageError

T = TypeVar("T")
SHARD_TEXT = re.compile(r"(?P<index>[0-9]+)/(?P<count>[0-9]+)")


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (1-based) of ``count`` shares of the cases."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise UsageError(f"--shard {self}: expected i/N with 1 <= i <= N (1-based, as SLURM array task ids "
                             "--array=1-N)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'i/N' text (``--shard``); UsageError in one line otherwise."""
        match = SHARD_TEXT.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"--shard {text}: expected i/N with 1 <= i <= N, e.g. --shard "
                             "$SLURM_ARRAY_TASK_ID/8")
        return cls(int(match["index"]), int(match["count"]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T], case_id=lambda item: item.case_id) -> list[T]:
        """This share of ``items`` (round-robin over their sorted case ids), in sorted order."""
        ordered = sorted(items, key=case_id)
        return ordered[self.index - 1::self.count]
