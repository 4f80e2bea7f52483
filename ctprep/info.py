"""`ctprep info`: what a store holds (layout, cases, slices, lesion balance, raters, splits, size on disk)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctprep.console import human_bytes, ratio_text
from ctprep.index import empty_per_lesion, rater_disagreement
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
    consensus: str = "majority"  # the rule that formed the stored masks from the raters
    raters: tuple[int, int] = (0, 0)  # fewest and most raters of a labeled case ((0, 0): no labeled case)
    multi_rater_cases: int = 0  # labeled cases with two raters or more
    disagreement_slices: int = 0  # labeled slices some but not all raters marked

    @property
    def disagreement_share(self) -> float:
        """Share of the labeled slices where raters disagree on lesion presence (NaN without labeled slices)."""
        return self.disagreement_slices / self.labeled_slices if self.labeled_slices else float("nan")

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
                ("empty:lesion", ratio_text(self.empty_per_lesion)), *self.rater_rows(),
                ("size on disk", human_bytes(self.disk_bytes))]

    def rater_rows(self) -> list[tuple[str, object]]:
        """Rows on the raters: per case (min-max), multi-rater cases, the consensus rule, slices they disagree on."""
        low, high = self.raters
        share = f"{100 * self.disagreement_share:.1f} %" if self.labeled_slices else "-"
        return [("raters per case", f"{low}" if low == high else f"{low}-{high}"),
                ("multi-rater cases", self.multi_rater_cases), ("consensus", self.consensus),
                ("rater disagreement slices", f"{self.disagreement_slices} ({share} of labeled)")]


def store_info(store_path: Path) -> StoreInfo:
    """Summarise the store at ``store_path`` from its root attributes and index."""
    store = SliceStore.open(store_path)
    index = store.index()
    per_case = index.groupby("case_id", sort=True).first()
    raters = per_case.loc[per_case["labeled"], "n_raters"]
    return StoreInfo(
        path=Path(store_path), format=f"{store.attrs['format']} v{store.attrs['format_version']}",
        tool_version=str(store.attrs.get("tool_version", "?")), window_hu=store.layout.window_hu,
        size=store.layout.size, dtype=store.layout.dtype, cases=len(per_case),
        labeled_cases=int(per_case["labeled"].sum()), slices=len(index),
        lesion_slices=int(index["has_lesion"].sum()), labeled_slices=int(index["labeled"].sum()),
        splits=_split_counts(index), disk_bytes=disk_bytes(store.path), consensus=store.consensus,
        raters=(int(raters.min()), int(raters.max())) if len(raters) else (0, 0),
        multi_rater_cases=int((raters > 1).sum()), disagreement_slices=int(rater_disagreement(index).sum()),
    )


def _split_counts(index) -> tuple[tuple[str, int, int, int, int, int], ...]:
    """(split, cases, labeled cases, unlabeled cases, slices, lesion slices) per split present, train/val/test first."""
    counts = split_counts(index)
    return tuple((str(split), int(r.patients), int(r.labeled), int(r.unlabeled), int(r.slices), int(r.lesion))
                 for split, r in counts.iterrows())
