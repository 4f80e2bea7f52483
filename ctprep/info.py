"""`ctprep info`: what a store holds (layout, cases, slices, lesion balance, splits, size on disk)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.console import human_bytes, ratio_text
from ctprep.index import empty_per_lesion
from ctprep.splits import split_counts
from ctprep.store import SliceStore, disk_bytes


@dataclass(frozen=True)
class StoreInfo:
    """A store's summary, as ``ctprep info`` prints it."""

    path: Path
    format: str  # e.g. "ctstack-slice-store v2"
    tool_version: str
    window_hu: tuple[float, float]
    size: int
    dtype: str
    cases: int
    labeled_cases: int
    slices: int
    lesion_slices: int
    labeled_slices: int
    splits: tuple[tuple[str, int, int, int, int, int], ...]  # (split, cases, labeled, unlabeled, slices, lesion)
    disk_bytes: int

    @property
    def empty_per_lesion(self) -> float:
        """Empty:lesion ratio over labeled slices (NaN without lesion slices)."""
        return empty_per_lesion(self.labeled_slices, self.lesion_slices)

    def rows(self) -> list[tuple[str, object]]:
        """(what, value) rows for the summary table."""
        lo, hi = self.window_hu
        return [("format", self.format), ("tool version", self.tool_version), ("window (HU)", f"{lo:g},{hi:g}"),
                ("size", f"{self.size}x{self.size}"), ("dtype", self.dtype), ("cases", self.cases),
                ("labeled cases", self.labeled_cases), ("slices", self.slices), ("lesion slices", self.lesion_slices),
                ("empty:lesion", ratio_text(self.empty_per_lesion)), ("size on disk", human_bytes(self.disk_bytes))]


def store_info(store_path: Path) -> StoreInfo:
    """Summarise the store at ``store_path`` from its root attributes and index."""
    store = SliceStore.open(store_path)
    index = store.index()
    per_case = index.groupby("case_id", sort=True).first()
    return StoreInfo(
        path=Path(store_path), format=f"{store.attrs['format']} v{store.attrs['format_version']}",
        tool_version=str(store.attrs.get("tool_version", "?")), window_hu=store.layout.window_hu,
        size=store.layout.size, dtype=store.layout.dtype, cases=len(per_case),
        labeled_cases=int(per_case["labeled"].sum()), slices=len(index),
        lesion_slices=int(index["has_lesion"].sum()), labeled_slices=int(index["labeled"].sum()),
        splits=_split_counts(index), disk_bytes=disk_bytes(store.path),
    )


def _split_counts(index) -> tuple[tuple[str, int, int, int, int, int], ...]:
    """(split, cases, labeled cases, unlabeled cases, slices, lesion slices) per split present, train/val/test first."""
    counts = split_counts(index)
    return tuple((str(split), int(r.patients), int(r.labeled), int(r.unlabeled), int(r.slices), int(r.lesion))
                 for split, r in counts.iterrows())
