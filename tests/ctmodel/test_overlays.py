"""Overlay figures: one per distinct best/median/worst case, large panels, contours with a legend, a readable title."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ctmodel.evaluate import CaseScore, evaluate_cases, split_cases
from ctmodel.metrics import CaseMetrics, SliceScores
from ctmodel.overlays import MIN_PANEL_PX, overlay_figure, overlay_title, pick_cases, write_overlays, zoom_box
from ctprep.store import SliceStore


def result(case_id: str, dice: float, n_slices: int = 9, z: int = 4, pred: np.ndarray | None = None) -> CaseScore:
    metrics = CaseMetrics(dice, dice, dice, 0.0, 1.0, 1.0, SliceScores(n_slices, 0, 0.0, 0.0))
    return CaseScore(case_id, metrics, 0.0, z, np.zeros((16, 16), bool) if pred is None else pred)


@pytest.mark.parametrize("dices, expected", [
    ([], []),
    ([0.5], [(("best", "median", "worst"), "c0")]),
    ([0.5, 0.9], [(("best", "median"), "c1"), (("worst",), "c0")]),  # median of two: the better one
    ([0.5, 0.9, 0.7], [(("best",), "c1"), (("median",), "c2"), (("worst",), "c0")]),
    ([0.1, 0.2, 0.3, 0.4, 0.5], [(("best",), "c4"), (("median",), "c2"), (("worst",), "c0")]),
])
def test_each_case_is_picked_once_with_every_label_it_earns(dices, expected):
    picked = pick_cases([result(f"c{i}", d) for i, d in enumerate(dices)])
    assert [(labels, r.case_id) for labels, r in picked] == expected


def test_equal_dice_is_ranked_by_case_id():
    picked = pick_cases([result("b", 0.0), result("c", 0.0), result("a", 0.0)])
    assert [(labels, r.case_id) for labels, r in picked] == [(("best",), "a"), (("median",), "b"), (("worst",), "c")]


@settings(max_examples=80, deadline=None)
@given(size=st.integers(8, 64), data=st.data())
def test_zoom_box_is_a_square_inside_the_image_holding_the_whole_mask(size, data):
    mask = np.zeros((size, size), bool)
    r0, c0 = data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, size - 1))
    r1, c1 = data.draw(st.integers(r0 + 1, size)), data.draw(st.integers(c0 + 1, size))
    mask[r0:r1, c0:c1] = True
    top, bottom, left, right = zoom_box(mask)
    assert 0 <= top < bottom <= size and 0 <= left < right <= size
    assert bottom - top == right - left  # square, so pixels stay square in the panel
    assert top <= r0 and r1 <= bottom and left <= c0 and c1 <= right


def test_zoom_box_of_an_empty_mask_is_the_whole_image():
    assert zoom_box(np.zeros((12, 12), bool)) == (0, 12, 0, 12)


@pytest.mark.parametrize("size", [16, 96, 512])
def test_figure_has_three_panels_at_least_native_size_and_a_legend_for_both_masks(size):
    truth = np.zeros((size, size), bool)
    truth[5:9, 5:9] = True
    pred = np.roll(truth, 2, axis=1)
    figure = overlay_figure(np.full((size, size), 0.5, np.float32), truth, pred, "title\nsecond line")
    axes = figure.get_axes()
    assert len(axes) == 3
    figure.draw_without_rendering()  # runs the layout and the equal-aspect fit
    for ax in axes:
        box = ax.get_window_extent()
        assert min(box.width, box.height) >= max(MIN_PANEL_PX, size)  # one screen pixel per stored pixel or more
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["truth (16 px)", "prediction (16 px)"]


def test_a_mask_empty_on_the_slice_is_named_in_the_legend_and_draws_no_contour():
    truth = np.zeros((16, 16), bool)
    truth[5:9, 5:9] = True
    figure = overlay_figure(np.zeros((16, 16), np.float32), truth, np.zeros_like(truth), "title")
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["truth (16 px)", "prediction (none on this slice)"]
    contours_per_panel = [len(ax.collections) for ax in figure.get_axes()]
    assert contours_per_panel == [0, 1, 1]  # the input slice stays clean; truth alone on the other two


def test_zoom_follows_the_truth_not_a_far_false_positive():
    truth = np.zeros((64, 64), bool)
    truth[30:34, 30:34] = True
    pred = truth.copy()
    pred[0, 0] = True  # a stray false positive in the corner
    figure = overlay_figure(np.zeros((64, 64), np.float32), truth, pred, "title")
    top, bottom, left, right = zoom_box(truth)
    assert (top, left) != (0, 0)
    assert figure.get_axes()[2].get_title() == f"zoom: rows {top}-{bottom - 1}, columns {left}-{right - 1}"


def test_title_names_the_labels_case_slice_and_both_dice():
    truth = np.zeros((16, 16), bool)
    truth[4:8, 4:8] = True  # 16 px; the prediction hits half of them and nothing else: Dice 2*8/(16+8)
    pred = np.zeros((16, 16), bool)
    pred[4:6, 4:8] = True
    title = overlay_title(("best", "median"), result("p03", 0.8745, n_slices=120, z=41, pred=pred), truth)
    assert title == ("best = median: case p03\nslice 41 of 120 (0 = most inferior)  |  "
                     f"Dice 3-D 0.875, this slice {2 * 8 / (16 + 8):.3f}")


def test_a_single_case_gives_one_figure_not_three_identical_ones(tmp_path, tiny_store):
    store = SliceStore.open(tiny_store)
    oracle = {store.read_image(c).tobytes(): store.read_mask(c).astype(np.float32) for c in store.case_ids()}
    results = evaluate_cases(store, split_cases(store, "test"), lambda v: oracle[v.tobytes()], progress=False)
    paths = write_overlays(store, results, tmp_path / "figs")
    assert [p.name for p in paths] == ["best-median-worst-case4.png"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["best-median-worst-case4.png"]
    width, height = Image.open(paths[0]).size
    assert width >= 3 * MIN_PANEL_PX and height >= MIN_PANEL_PX
