"""`--difficulty realistic`: fainter lesions, lesions on the pleura, thick slices, look-alikes; easy unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from cli import prep_app
from ctprep.demo import DemoConfig, make_demo
from ctprep.demo.anatomy import SliceRenderer, draw_patient, lung_frame
from ctprep.demo.lesions import EASY_LESIONS
from ctprep.demo.phantom import make_phantom
from ctprep.demo.realistic import REALISTIC_LESIONS, THICK_MM, draw_realism, thicken
from ctprep.errors import UsageError

QUICK = dict(size=64, max_slices=24, workers=1)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def phantoms(difficulty: str, cases: int = 12) -> list:
    return [make_phantom(0, i, 64, 24, difficulty) for i in range(cases)]


def lung_volume(p) -> np.ndarray:
    """The lungs of a drawn patient, slice by slice (lesions are clipped to exactly this)."""
    renderer = SliceRenderer(p, np.random.default_rng(0))  # the generator only shapes the lung texture
    lungs = np.zeros((p.n_slices, p.size, p.size), dtype=bool)
    for k in range(p.n_slices):
        for side in (0, 1):
            found = renderer.lung_mask(side, float(p.z_mm(k)))
            if found is not None:
                lungs[k][found[1]] |= found[0]
    return lungs


def test_easy_stays_the_default_and_keeps_its_bytes():
    assert DemoConfig().difficulty == "easy"
    phantom = make_phantom(0, 0, 64, 24)
    digest = hashlib.md5(phantom.hu.tobytes() + phantom.mask.tobytes()).hexdigest()
    assert digest == "8537028f588a6dae2bcefac180c38c6d"  # recorded before the realistic difficulty existed


def test_realistic_set_is_byte_identical_by_seed_in_the_same_layout(tmp_path):
    make_demo(tmp_path / "a", DemoConfig(cases=3, seed=4, difficulty="realistic", **QUICK))
    make_demo(tmp_path / "b", DemoConfig(cases=3, seed=4, difficulty="realistic", **QUICK))
    make_demo(tmp_path / "easy", DemoConfig(cases=3, seed=4, **QUICK))
    a, b, easy = (file_bytes(tmp_path / name) for name in ("a", "b", "easy"))
    assert a == b
    assert a.keys() == easy.keys() and all(a[k] != easy[k] for k in a)


def test_realistic_lesions_stand_out_less_from_the_lung_than_easy_ones():
    def contrast(ph) -> float:
        lesion = ph.mask.astype(bool)
        return float(ph.hu[lesion].mean() - np.median(ph.hu[lung_volume(ph.patient) & ~lesion]))

    easy, realistic = phantoms("easy"), phantoms("realistic")
    pairs = [(contrast(e), contrast(r)) for e, r in zip(easy, realistic) if e.mask.any() and r.mask.any()]
    easy_c, realistic_c = np.array(pairs).T
    # ground glass tops out at -560 HU instead of -300, consolidation at -50 instead of +50
    assert realistic_c.mean() < 0.75 * easy_c.mean()
    assert (realistic_c < easy_c).mean() >= 0.75


def test_realistic_lesion_style_is_fainter_softer_and_paved():
    assert REALISTIC_LESIONS.ggo_hu[1] < EASY_LESIONS.ggo_hu[1] and REALISTIC_LESIONS.ggo_hu[0] < EASY_LESIONS.ggo_hu[0]
    assert REALISTIC_LESIONS.halo["ggo"] > EASY_LESIONS.halo["ggo"] and REALISTIC_LESIONS.soft_core > 0
    assert REALISTIC_LESIONS.paving_hu > 0 and REALISTIC_LESIONS.pleural_p > 0
    assert any(les.paving[2] > 0 for ph in phantoms("realistic", 4) for les in ph.lesions if les.kind == "ggo")


def test_most_realistic_lesions_touch_the_chest_wall_or_mediastinum():
    touching = total = 0
    for ph in phantoms("realistic"):
        lungs = lung_volume(ph.patient)
        lesion = ph.mask.astype(bool)
        outside = np.stack([ndimage.binary_dilation(s) for s in lesion]) & ~lungs  # next to a lesion, not lung
        labels, n = ndimage.label(lesion)
        near = np.stack([ndimage.binary_dilation(s) for s in outside]) & lesion
        touching += len(set(np.unique(labels[near])) - {0})
        total += n
    assert total >= 20 and touching / total >= 0.6


def test_some_patients_get_thick_slices_over_the_same_chest():
    easy = [ph.patient for ph in phantoms("easy")]
    realistic = [ph.patient for ph in phantoms("realistic")]
    thick = [r.slice_mm > e.slice_mm for e, r in zip(easy, realistic)]
    assert 1 <= sum(thick) <= 8  # some, not all (35 % of patients)
    for e, r, is_thick in zip(easy, realistic, thick):
        assert r.n_slices * r.slice_mm == pytest.approx(e.n_slices * e.slice_mm)
        assert r.slice_mm >= (max(THICK_MM, 1.6 * e.slice_mm) if is_thick else e.slice_mm)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), max_slices=st.sampled_from([None, 24, 80]))
def test_thickening_never_thins_and_keeps_the_scan_length(seed, max_slices):
    p = draw_patient(np.random.default_rng(seed), 64, max_slices)
    q = thicken(np.random.default_rng(seed + 1), p)
    assert q.slice_mm >= p.slice_mm and 4 <= q.n_slices <= p.n_slices
    assert q.n_slices * q.slice_mm == pytest.approx(p.n_slices * p.slice_mm)


def test_look_alikes_lie_in_the_lungs_and_show_on_one_slice_each():
    p = draw_patient(np.random.default_rng(5), 128, None)
    realism = draw_realism(np.random.default_rng(6), p, SliceRenderer(p, np.random.default_rng(7)))
    x, y, z = realism.mimics[:, 0], realism.mimics[:, 1], realism.mimics[:, 2]
    assert len(z) >= 10 and 0 < realism.mimics[:, 5].mean() < 1  # both vessels seen end-on and bronchi
    slabs = np.abs(p.z_mm(np.arange(p.n_slices))[None, :] - z[:, None]) < p.slice_mm / 2
    assert (slabs.sum(axis=1) <= 1).all() and slabs.any(axis=1).mean() > 0.95
    for side in (0, 1):
        cx, cy, ax, ay = lung_frame(p, side, z)
        mine = np.sign(x) == np.sign(cx)
        assert (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)[mine].max() <= 1.0


def test_realistic_images_are_noisier():
    def soft_tissue_sd(ph) -> float:
        p = ph.patient
        centre = p.size // 2
        abdomen = ph.hu[0, centre - 3:centre + 4, centre - 12:centre - 5].astype(float)  # lowest slice
        return float(abdomen.std())

    easy, realistic = phantoms("easy", 4), phantoms("realistic", 4)
    assert np.mean([soft_tissue_sd(r) for r in realistic]) > 1.4 * np.mean([soft_tissue_sd(e) for e in easy])


def test_unknown_difficulty_is_a_usage_error_and_a_one_line_cli_exit_2(tmp_path):
    with pytest.raises(UsageError, match="difficulty 'hard': expected one of easy, realistic"):
        DemoConfig(difficulty="hard")
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), "--difficulty", "hard"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_cli_writes_a_realistic_set(tmp_path):
    result = CliRunner().invoke(prep_app, ["demo", str(tmp_path / "raw"), "--cases", "2", "--size", "32",
                                           "--max-slices", "6", "--workers", "1", "--difficulty", "realistic"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "raw").glob("*_seg.nii.gz"))) == 2
