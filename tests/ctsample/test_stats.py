"""ctsample stats: lesion slices and source voxels lost to resizing, per patient and overall."""
from __future__ import annotations

import pandas as pd

from ctprep.index import case_rows, lost_to_resize
from ctsample.stats import overall_rows, patient_stats


def index_with_a_lost_slice() -> pd.DataFrame:
    """Patient a: slice 1 had 3 source voxels that stored no pixel (a format-1 store at a small size could)."""
    a = case_rows("a", 4, [0, 0, 5, 0], "train", [0, 3, 20, 0])
    b = case_rows("b", 3, [2, 0, 0], "train", [8, 0, 0])
    unlabeled = case_rows("u", 2, None, "train")
    return pd.concat([a, b, unlabeled], ignore_index=True)


def test_lost_slices_have_source_voxels_but_an_empty_stored_mask():
    assert lost_to_resize(index_with_a_lost_slice()) == (1, 3)


def test_stats_report_lost_slices_and_voxels_per_patient_and_overall():
    stats = patient_stats(index_with_a_lost_slice()).set_index("case_id")
    assert stats.loc["a", ["source_lesion_voxels", "lost_slices", "lost_voxels"]].tolist() == [23, 1, 3]
    assert stats.loc["b", ["source_lesion_voxels", "lost_slices", "lost_voxels"]].tolist() == [8, 0, 0]
    rows = dict(overall_rows(stats.reset_index(), unlabeled=1))
    assert rows["lesion slices lost to resizing"] == 1
    assert rows["lesion voxels lost to resizing"] == "3 of 31"
