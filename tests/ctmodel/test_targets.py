"""`ctmodel train --target`: each target built on the device from the resident raters, on hand masks; the
random rater's draws; one-rater stores where every target is the stored mask; a short train of each target."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_store, phantom, ras_affine
from ctmodel.batches import ResidentVolumes, load_resident, resident_bytes
from ctmodel.config import TARGETS, ModelConfig, TrainConfig
from ctmodel.train import train
from ctprep.store import SliceStore, StoreLayout

torch.set_num_threads(1)

# Case "a": 3 raters, 1 slice of 2x2 pixels; case "b": 1 rater. Pixel order: top-left, top-right, bottom-l, -r.
RATERS_A = np.array([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[1, 1], [1, 0]]], np.uint8)  # (R=3, S, S)
RATER_B = np.array([[0, 1], [1, 1]], np.uint8)
MAJORITY_A = (RATERS_A.sum(0) >= 2).astype(np.uint8)


def hand_volumes(target: str) -> ResidentVolumes:
    """Both cases resident, raters flat: case a's three (one slice each), then case b's one."""
    masks = torch.from_numpy(np.stack([MAJORITY_A, RATER_B]))
    return ResidentVolumes(images=torch.zeros(2, 2, 2), masks=masks, case_ids=["a", "b"],
                           starts=torch.tensor([0, 1]), n_slices=torch.tensor([1, 1]), device=torch.device("cpu"),
                           target=target, raters=torch.from_numpy(np.concatenate([RATERS_A, RATER_B[None]])),
                           rater_starts=torch.tensor([0, 3]), n_raters=torch.tensor([3, 1]), max_raters=3)


def target_of(target: str, case: int, generator=None) -> np.ndarray:
    data = hand_volumes(target)
    return data.centre_targets(torch.tensor([case]), torch.tensor([0]), generator)[0].numpy()


@pytest.mark.parametrize("target, expected", [
    ("consensus", MAJORITY_A[None]),
    ("union", RATERS_A.max(0)[None]),  # any rater: [[1, 1], [1, 0]]
    ("intersection", RATERS_A.min(0)[None]),  # every rater: [[1, 0], [0, 0]]
    ("soft", RATERS_A.mean(0)[None]),  # [[1, 2/3], [1/3, 0]]
    ("ugs", np.stack([MAJORITY_A, RATERS_A.min(0), RATERS_A.max(0)])),  # consensus, intersection, union
])
def test_each_target_on_three_hand_raters(target, expected):
    np.testing.assert_allclose(target_of(target, 0), expected.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("target", ["union", "intersection", "soft"])
def test_a_one_rater_case_beside_a_three_rater_case_is_its_rater(target):
    np.testing.assert_array_equal(target_of(target, 1)[0], RATER_B)  # padding rows past R_c never count


def drawn_raters(seed: int, steps: int, batch: int = 64) -> list[list[int]]:
    """Per step, which rater of case a each of ``batch`` samples got (read back from the target's pixels)."""
    data, generator = hand_volumes("random-rater"), torch.Generator().manual_seed(seed)
    by_pixels = {tuple(r.ravel()): i for i, r in enumerate(RATERS_A)}
    out = []
    for _ in range(steps):
        y = data.centre_targets(torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long), generator)
        out.append([by_pixels[tuple(t.ravel().int().tolist())] for t in y[:, 0]])
    return out


def test_random_rater_repeats_under_its_seed_and_changes_per_sample_and_step():
    first, again = drawn_raters(seed=3, steps=2), drawn_raters(seed=3, steps=2)
    assert first == again
    assert first[0] != first[1]  # a fresh draw every step
    assert set(first[0]) == {0, 1, 2}  # every rater is drawn across the samples of one step


def test_consensus_target_loads_no_raters(tiny_store):
    store = SliceStore.open(tiny_store)
    data = load_resident(store, ["case0"], torch.device("cpu"), show_progress=False)
    assert data.raters is None  # the one-rater path costs exactly what it did
    assert data.nbytes() == resident_bytes(store, int(data.n_slices.sum()))


@pytest.mark.parametrize("target", ["consensus", "union", "intersection", "soft", "random-rater"])
def test_one_rater_store_every_target_is_the_stored_mask(tiny_store, target):
    store = SliceStore.open(tiny_store)
    data = load_resident(store, ["case0", "case1"], torch.device("cpu"), show_progress=False, target=target)
    z = torch.arange(int(data.n_slices[1]))
    y = data.centre_targets(torch.ones_like(z), z, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(y[:, 0].numpy(), store.read_mask("case1"))
    if target != "consensus":  # the rater tensor is counted in the memory accounting
        assert data.nbytes() == resident_bytes(store, int(data.n_slices.sum()), int(data.n_slices.sum()))


@pytest.fixture(scope="module")
def rater_store(tmp_path_factory):
    """A 32x32 store of four phantom cases with three raters each: the phantom lesion, dilated, and eroded."""
    from scipy import ndimage

    cases, raters = {}, {}
    for i in range(4):
        hu, mask = phantom(shape=(30, 28, 10), seed=i)
        cases[f"c{i}"] = (hu, mask, ras_affine())
        lesion = mask > 0
        raters[f"c{i}"] = {"r1": lesion.astype(np.uint8), "r2": ndimage.binary_dilation(lesion).astype(np.uint8),
                           "r3": ndimage.binary_erosion(lesion).astype(np.uint8)}
    splits = {"c0": "train", "c1": "train", "c2": "train", "c3": "val"}
    return build_store(tmp_path_factory.mktemp("s") / "store.zarr", cases, splits, StoreLayout(size=32), raters)


@pytest.mark.parametrize("target", TARGETS)
def test_a_short_train_of_each_target_on_a_three_rater_store(rater_store, tmp_path, target):
    cfg = TrainConfig(epochs=1, batch_size=8, augment=target == "ugs", seed=0, target=target)
    model_cfg = ModelConfig(name="unet2d", width=4, depth=2, heads="ugs" if target == "ugs" else "consensus")
    result = train(rater_store, model_cfg, cfg, out=tmp_path / "run")
    assert np.isfinite(result.rows[0]["train_loss"]) and np.isfinite(result.rows[0]["val_loss"])
    assert result.summary["epochs"] == 1
