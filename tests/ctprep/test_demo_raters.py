"""`ctprep demo --raters R`: R plausible annotators per case, named as the layouts name raters, LIDC-like agreement."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from ctprep.convert import ConvertConfig, convert
from ctprep.demo import DemoConfig, make_demo
from ctprep.demo.phantom import make_phantom
from ctprep.demo.raters import FAINT_HU, lesion_dice, rater_masks
from ctprep.errors import UsageError
from ctprep.store import SliceStore

SMALL = dict(size=64, max_slices=8, workers=1)


def test_one_rater_writes_the_bytes_of_before(tmp_path):
    """--raters 1 (the default) leaves the demo set byte-identical to ctstack before raters existed."""
    make_demo(tmp_path, DemoConfig(cases=2, raters=1, **SMALL))
    pinned = {  # sha256 of `ctprep demo --cases 2 --size 64 --max-slices 8` written by the pre-rater ctstack
        "demo_000_ct.nii.gz": "7512c2f45e99dc46a75f81ccc62f017e477949425ce06578685df1f18e9a43b5",
        "demo_000_seg.nii.gz": "3aa52cb4f37e090c0f9fce5d1009162132fa75bf7d58076f7f71b9ce3e8f7f08",
        "demo_001_ct.nii.gz": "4985b3ee7d48e50f3122b1b173d2498dbc9880ee454f533dc0c0eb88bba70e84",
        "demo_001_seg.nii.gz": "67fa8154e8f1570293d2a771a638471896395a3fd0afcb9e20db22444c52037a",
    }
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == pinned


@pytest.mark.parametrize("layout, names, labeled", [
    ("covid19", ["demo_000_ct.nii.gz", "demo_000_seg_r1.nii.gz", "demo_000_seg_r2.nii.gz", "demo_000_seg_r3.nii.gz"],
     4),
    ("nnunet", ["imagesTr/demo_000_0000.nii.gz", "labelsTr/demo_000_r1.nii.gz", "labelsTr/demo_000_r2.nii.gz",
                "labelsTr/demo_000_r3.nii.gz"], 3),  # nnunet leaves one case in four unlabeled (imagesTs/)
])
def test_rater_files_are_named_as_the_layout_names_raters_and_convert_as_raters(tmp_path, layout, names, labeled):
    rows = make_demo(tmp_path / "raw", DemoConfig(cases=4, raters=3, layout=layout, **SMALL))
    written = sorted(str(p.relative_to(tmp_path / "raw")) for p in (tmp_path / "raw").rglob("demo_000*"))
    assert written == names
    assert rows["labeled"].sum() == labeled and all(len(r) == 3 for r in rows["raters"].dropna())
    convert(tmp_path / "raw", tmp_path / "s.zarr", ConvertConfig(size=32, workers=1), progress=False)
    store = SliceStore.open(tmp_path / "s.zarr")
    with_masks = [c for c in store.case_ids() if store.has_mask(c)]
    assert len(with_masks) == labeled and all(store.rater_ids(c) == ["r1", "r2", "r3"] for c in with_masks)


def test_raters_differ_as_described_careful_generous_and_missing_faint_lesions():
    phantom = make_phantom(0, 2, 256, 24)
    r1, r2, r3, r4 = (m.astype(bool) for m in rater_masks(phantom, 4, 0, 2))
    truth = phantom.mask.astype(bool)
    assert r2.sum() > r1.sum() > 0 and r2.sum() > truth.sum()  # the generous rater draws wider
    assert (r1 ^ truth).sum() > 0 and (r1 ^ r4).sum() > 0  # boundaries differ
    labels, count = ndimage.label(truth)
    means = ndimage.mean(phantom.hu.astype(float), labels, np.arange(1, count + 1))
    faint = [lesion for lesion, mean_hu in enumerate(means, start=1) if mean_hu < FAINT_HU]
    assert 0 < len(faint) < count  # case 2 has faint ground glass and clearer lesions
    for lesion in range(1, count + 1):
        assert r3[labels == lesion].any() == (lesion not in faint)  # rater 3 missed exactly the faint ones
    assert rater_masks(phantom, 4, 0, 2)[1].tobytes() == r2.astype(np.uint8).tobytes()  # reproducible


def test_inter_rater_dice_per_lesion_sits_where_lidc_does():
    """Four raters on a 512 matrix (the scanner's): mean per-lesion Dice 0.7-0.85 (docs/demo-data.md)."""
    dice = []
    for index in range(6):
        phantom = make_phantom(0, index, 512, 24)
        dice += lesion_dice(phantom.mask, rater_masks(phantom, 4, 0, index))
    assert len(dice) >= 10
    assert 0.7 <= float(np.mean(dice)) <= 0.85


def test_raters_out_of_range_are_refused():
    with pytest.raises(UsageError, match="raters=0: expected an integer in 1..8"):
        DemoConfig(raters=0)
