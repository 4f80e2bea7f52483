"""The resident loader: gathered stacks equal what the store reader returns, edges repeat, epochs cover the plan."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import build_store, phantom, ras_affine
from ctmodel.batches import choose_residency, epoch_samples, iterate_batches, load_resident
from ctprep.errors import PlanError, UsageError
from ctprep.store import SliceStore, StoreLayout

torch.set_num_threads(1)


def store_stack(store: SliceStore, case_id: str, z: int) -> np.ndarray:
    """The (z-1, z, z+1) stack read slice by slice through the store reader, ends clamped."""
    n = store.read_image(case_id).shape[0]
    return np.stack([store.read_image(case_id, slice(k, k + 1))[0] for k in (max(z - 1, 0), z, min(z + 1, n - 1))])


def test_stacks_equal_store_reads_with_edge_slices_repeated(tiny_store):
    store = SliceStore.open(tiny_store)
    cases = store.case_ids()
    data = load_resident(store, cases, torch.device("cpu"), show_progress=False)
    n = store.read_image("case2").shape[0]
    picks = [("case0", 0), ("case2", n - 1), ("case2", 4), ("case4", 1), ("case1", n - 1)]
    case_pos = data.position([c for c, _ in picks])
    stacks = data.stacks(case_pos, torch.tensor([z for _, z in picks]))
    assert stacks.shape == (len(picks), 3, 16, 16) and stacks.dtype == torch.float32
    for got, (case_id, z) in zip(stacks, picks):
        np.testing.assert_array_equal(got.numpy(), store_stack(store, case_id, z))
    np.testing.assert_array_equal(stacks[0, 0], stacks[0, 1])  # slice 0: z-1 repeats the edge
    np.testing.assert_array_equal(stacks[1, 2], stacks[1, 1])  # last slice: z+1 repeats the edge


def test_centre_masks_equal_store_masks(tiny_store):
    store = SliceStore.open(tiny_store)
    data = load_resident(store, ["case1", "case3"], torch.device("cpu"), show_progress=False)
    masks = data.centre_masks(data.position(["case3", "case1"]), torch.tensor([4, 5]))
    np.testing.assert_array_equal(masks[0, 0].numpy(), store.read_mask("case3")[4])
    np.testing.assert_array_equal(masks[1, 0].numpy(), store.read_mask("case1")[5])


def test_uint8_store_decodes_exactly_like_the_store_reader(tmp_path):
    cases = {f"c{i}": (*phantom(seed=i), ras_affine()) for i in range(2)}
    path = build_store(tmp_path / "u8.zarr", cases, {"c0": "train", "c1": "val"}, StoreLayout(size=16, dtype="uint8"))
    store = SliceStore.open(path)
    data = load_resident(store, ["c0", "c1"], torch.device("cpu"), show_progress=False)
    assert data.images.dtype == torch.uint8  # resident in the stored dtype, decoded per batch
    stacks = data.stacks(data.position(["c1"]), torch.tensor([3]))
    np.testing.assert_array_equal(stacks[0].numpy(), store_stack(store, "c1", 3))


def test_an_epoch_yields_every_planned_sample_once_in_a_seeded_order(tiny_store):
    store = SliceStore.open(tiny_store)
    data = load_resident(store, ["case0", "case1"], torch.device("cpu"), show_progress=False)
    plan = pd.DataFrame({"case_id": ["case0"] * 4 + ["case1"] * 3, "slice": [0, 3, 4, 8, 2, 4, 5]})
    samples = epoch_samples(data, plan)
    centres = {(c, z): store.read_image(c, slice(z, z + 1))[0] for c, z in zip(plan.case_id, plan.slice)}

    def epoch(seed):
        batches = list(iterate_batches(data, samples, 3, torch.Generator().manual_seed(seed)))
        return [x[:, 1] for x, _ in batches], [len(x) for x, _ in batches]

    images, sizes = epoch(0)
    assert sizes == [3, 3, 1]
    seen = [next(key for key, ref in centres.items() if np.array_equal(ref, img.numpy()))
            for batch in images for img in batch]
    assert sorted(seen) == sorted(centres)
    assert all(torch.equal(a, b) for a, b in zip(images, epoch(0)[0]))
    assert not all(torch.equal(a, b) for a, b in zip(images, epoch(1)[0]))


def test_unknown_or_unlabeled_case_is_a_plan_error(tiny_store, tmp_path):
    store = SliceStore.open(tiny_store)
    with pytest.raises(PlanError, match="not in the store"):
        load_resident(store, ["case0", "nope"], torch.device("cpu"), show_progress=False)
    cases = {"lab": (*phantom(), ras_affine()), "unlab": (phantom()[0], None, ras_affine())}
    other = SliceStore.open(build_store(tmp_path / "u.zarr", cases, {"lab": "train", "unlab": "train"}))
    with pytest.raises(PlanError, match="unlabeled"):
        load_resident(other, ["lab", "unlab"], torch.device("cpu"), show_progress=False)


def test_data_too_large_for_any_memory_streams_or_names_the_sizes():
    assert choose_residency(4096 * 2**30, torch.device("cpu")) is None  # auto: stream it (ctmodel/stream.py)
    with pytest.raises(UsageError, match=r"--resident host: data needs 4096\.00 GiB.*host available.*stream"):
        choose_residency(4096 * 2**30, torch.device("cpu"), "host")
    assert choose_residency(2**20, torch.device("cpu")) == torch.device("cpu")


def test_memory_budget_caps_residency_and_stream_always_streams():
    cpu = torch.device("cpu")
    assert choose_residency(2**20, cpu, "auto", budget=2**20) == cpu  # exactly the budget still fits
    assert choose_residency(2**20 + 1, cpu, "auto", budget=2**20) is None
    assert choose_residency(1, cpu, "stream") is None
    with pytest.raises(UsageError, match=r"--memory-budget 1 MiB"):
        choose_residency(2**20 + 1, cpu, "host", budget=2**20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_resident_batches_equal_cpu_batches(tiny_store):
    store = SliceStore.open(tiny_store)
    cpu = load_resident(store, store.case_ids(), torch.device("cpu"), show_progress=False)
    gpu = load_resident(store, store.case_ids(), torch.device("cuda"), show_progress=False)
    assert gpu.images.is_cuda
    picks = (["case0", "case2", "case4"], [0, 8, 4])
    expected = cpu.stacks(cpu.position(picks[0]), torch.tensor(picks[1]))
    got = gpu.stacks(gpu.position(picks[0]), torch.tensor(picks[1], device="cuda"))
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)
