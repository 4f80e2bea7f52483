"""The stream loader: batches identical to the resident loader's, the next epoch loading on a thread while the current
one trains, errors surfacing in the caller, a store many times the budget training end to end, and resume."""
from __future__ import annotations

import io
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from cli import model_app
from conftest import add_pseudo, build_store, one_line_error, phantom, ras_affine
from ctmodel.batches import (HOST_MEMORY_SHARE, epoch_samples, iterate_batches, load_resident, patch_shape,
                             patches_per_step, volumetric_subset)
from ctmodel.config import ModelConfig, TrainConfig, parse_bytes
from ctmodel.distributed import DistEnv
from ctmodel.runfolder import plan_epochs
from ctmodel.stream import (THREAD_NAME, EpochStream, default_budget, epoch_rows, load_epoch, needed_slices,
                            open_stream, read_case_rows, resident_need, stream_reason, val_needs)
from ctmodel.train import train
from ctprep.errors import StoreFormatError, UsageError
from ctprep.store import SliceStore
from ctsample.plan import PlanConfig, make_plan

torch.set_num_threads(1)
CPU = torch.device("cpu")
TINY = ModelConfig(width=4, depth=2)
WAIT_S = 60  # an event that is never set fails the test after this long (no timing is asserted)


def short_lesion(shape: tuple[int, int, int], seed: int, lesion_z: range) -> tuple:
    """A phantom case whose lesion is kept only on slices ``lesion_z`` (so a plan epoch needs few rows)."""
    hu, mask = phantom(shape=shape, seed=seed)
    keep = np.zeros(shape[2], dtype=bool)
    keep[list(lesion_z)] = True
    return hu, mask & keep[None, None, :], ras_affine()


@pytest.fixture(scope="module")
def stream_store(tmp_path_factory) -> Path:
    """4 labeled train cases of 30 slices (case0 with two raters that disagree), a pseudo-labelled unlabeled train
    case, 1 val and 1 test case; lesions on 3 slices, so an epoch needs a fraction of each case."""
    shape = (23, 17, 30)
    cases = {f"case{i}": short_lesion(shape, i, range(13 + i, 16 + i)) for i in range(6)}
    cases["u0"] = (phantom(shape=shape, seed=9)[0], None, ras_affine())
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "train", "case4": "val",
              "case5": "test", "u0": "train"}
    other = cases["case0"][1].copy()
    other[..., 12] = cases["case0"][1][..., 13]  # rater b also marks slice 12: union != intersection there
    path = build_store(tmp_path_factory.mktemp("stream") / "store.zarr", cases, splits,
                       raters={"case0": {"a": cases["case0"][1], "b": other}})
    pseudo = np.zeros((30, 16, 16), dtype=np.uint8)
    pseudo[14:16, 6:10, 6:10] = 1
    add_pseudo(path, "u0", pseudo)
    return path


def plan_of(store: SliceStore, epochs: int = 3, seed: int = 0, pseudo: bool = False) -> list[pd.DataFrame]:
    """Per epoch, the plan rows of a balanced plan (ratio 0.4: lesion slices, neighbours, a fresh random fill)."""
    plan = make_plan(store.index(), PlanConfig(ratio=0.4, epochs=epochs, seed=seed, pseudo=pseudo))
    return plan_epochs(plan.slices)


def epoch_batches(data, rows: pd.DataFrame, epoch: int, patch: tuple[int, int] | None = None) -> list[tuple]:
    """Every batch of one epoch as train_one_epoch draws them (same generator seeding from the epoch)."""
    shuffle = torch.Generator().manual_seed(1_000_003 + epoch)
    samples, batch_size = epoch_samples(data, rows), 4
    if patch is not None:
        samples = volumetric_subset(samples, batch_size, patch[0], shuffle)
        batch_size = patches_per_step(batch_size, patch[0])
    return list(iterate_batches(data, samples, batch_size, shuffle, patch=patch))


def forced_budget(store: SliceStore, plan: list[pd.DataFrame], val_ids: list[str], target: str = "consensus",
                  depth: int | None = None) -> int:
    """The smallest budget that keeps the val volumes resident beside two epochs' rows."""
    held = max(epoch_rows(store, rows, target, depth).nbytes(store) for rows in plan)
    return 2 * held + val_needs(store, val_ids)[0]


def assert_same_batches(expected: list[tuple], got: list[tuple]) -> None:
    """Batch lists equal tensor by tensor (x, y and any weights), bit for bit."""
    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got):
        assert len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b))


def test_needed_slices_are_each_stack_clamped_at_the_case_ends():
    # slice 0's stack is (0, 0, 1), slice 5's (4, 5, 6), slice 9's (8, 9, 9) in a 10-slice case
    np.testing.assert_array_equal(needed_slices(np.array([0, 5, 9]), 10), [0, 1, 4, 5, 6, 8, 9])


def test_needed_slices_of_unet3d_are_its_clamped_depth_windows():
    # depth 4 around z = 1 starts at 0 (clamped); around z = 8 of 10 it starts at 10 - 4 = 6
    np.testing.assert_array_equal(needed_slices(np.array([1, 8]), 10, patch_depth=4), [0, 1, 2, 3, 6, 7, 8, 9])
    np.testing.assert_array_equal(needed_slices(np.array([1]), 2, patch_depth=4), [0, 1])  # case shorter than depth


@pytest.mark.parametrize("target", ["consensus", "union", "soft", "random-rater", "ugs"])
def test_stream_batches_equal_resident_batches_under_a_forced_small_budget(stream_store, target):
    store = SliceStore.open(stream_store)
    plan = plan_of(store)
    cases = sorted(set(pd.concat(plan)["case_id"].astype(str)))
    resident = load_resident(store, cases, CPU, show_progress=False, target=target)
    budget = forced_budget(store, plan, ["case4"], target)
    cfg = TrainConfig(epochs=3, target=target, memory_budget=str(budget))
    assert budget < resident_need(store, cases + ["case4"], target)  # resident would not fit: auto streams
    assert stream_reason(store, cases + ["case4"], CPU, cfg) is not None
    stream, _val, _text = open_stream(store, plan, ["case4"], CPU, TINY, cfg)
    try:
        for epoch in (1, 2, 3):
            data = stream.epoch(epoch)
            assert data.images.shape[0] < resident.images.shape[0]  # only the epoch's rows are held
            rows = plan[epoch - 1]
            assert_same_batches(epoch_batches(resident, rows, epoch), epoch_batches(data, rows, epoch))
    finally:
        stream.close()


def test_stream_batches_equal_resident_ones_for_unet3d_patches_and_pseudo_rows(stream_store):
    store = SliceStore.open(stream_store)
    model = ModelConfig(name="unet3d", width=4, depth=2, patch_depth=8, patch_size=16)
    patch = patch_shape(model, store.layout.size)
    plan = plan_of(store, pseudo=True)
    assert "u0" in set(pd.concat(plan)["case_id"])
    cases = sorted(set(pd.concat(plan)["case_id"].astype(str)))
    resident = load_resident(store, cases, CPU, show_progress=False, unlabeled="pseudo")
    cfg = TrainConfig(epochs=3, memory_budget=str(forced_budget(store, plan, [], depth=patch[0])))
    stream, _val, _text = open_stream(store, plan, [], CPU, model, cfg, unlabeled="pseudo")
    try:
        for epoch in (1, 2, 3):
            rows = plan[epoch - 1]
            expected = epoch_batches(resident, rows, epoch, patch)
            assert_same_batches(expected, epoch_batches(stream.epoch(epoch), rows, epoch, patch))
    finally:
        stream.close()


@pytest.mark.parametrize("kept", [[0, 1, 28, 29], [13, 14, 15, 16], [2, 9, 17]])  # sparse: chunk reads; else range
def test_case_rows_equal_the_whole_case_rows_whichever_read_is_used(stream_store, kept):
    store, kept = SliceStore.open(stream_store), np.array(kept)
    image, mask, raters = read_case_rows(store, "case0", kept, "refuse", raters=True)
    np.testing.assert_array_equal(image, store.read_image_raw("case0")[kept])
    np.testing.assert_array_equal(mask, store.read_mask("case0")[kept])
    np.testing.assert_array_equal(raters, store.read_raters("case0")[:, kept])


@settings(max_examples=15, deadline=None)
@given(picks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 29)), min_size=1, max_size=12, unique=True))
def test_any_plan_epoch_gathers_the_resident_stacks_and_masks(stream_store, picks):
    store = SliceStore.open(stream_store)
    rows = pd.DataFrame({"case_id": [f"case{c}" for c, _ in picks], "slice": [z for _, z in picks]})
    cases = sorted(set(rows["case_id"]))
    resident = load_resident(store, cases, CPU, show_progress=False)
    data = load_epoch(store, epoch_rows(store, rows), CPU, CPU)
    slices = torch.tensor([z for _, z in picks])
    assert torch.equal(data.stacks(data.position(rows["case_id"]), slices),
                       resident.stacks(resident.position(rows["case_id"]), slices))
    assert torch.equal(data.centre_masks(data.position(rows["case_id"]), slices),
                       resident.centre_masks(resident.position(rows["case_id"]), slices))


def test_next_epoch_loads_on_the_thread_while_the_current_one_trains(stream_store):
    store = SliceStore.open(stream_store)
    plan = plan_of(store)
    layouts = [epoch_rows(store, rows) for rows in plan]
    started, finished = [threading.Event() for _ in plan], [threading.Event() for _ in plan]
    release, threads = threading.Event(), set()

    def slow_load(key: int, stop: threading.Event):
        threads.add(threading.current_thread().name)
        started[key].set()
        if key == 1:
            assert release.wait(WAIT_S)  # epoch 2's load stays in flight until the test lets it go
        data = load_epoch(store, layouts[key], CPU, CPU, stop=stop)
        finished[key].set()
        return data

    stream = EpochStream(slow_load, len(plan), last_epoch=3)
    try:
        first = stream.epoch(1)
        assert started[1].wait(WAIT_S)  # epoch 2 began loading without being asked for
        assert epoch_batches(first, plan[0], 1)  # epoch 1 "trains" while epoch 2 is mid-load
        assert not finished[1].is_set()
        release.set()
        stream.epoch(2)
        assert finished[1].is_set() and started[2].wait(WAIT_S)
    finally:
        stream.close()
    assert threads and all(name.startswith(THREAD_NAME) for name in threads)
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]  # joined


def test_an_error_in_the_loader_thread_is_raised_by_the_next_epoch_and_the_thread_joins(stream_store):
    store = SliceStore.open(stream_store)
    plan = plan_of(store)

    def failing_load(key: int, stop: threading.Event):
        if key == 1:
            raise StoreFormatError(f"{store.path}/cases/case1/image: unreadable (expected decodable shards)")
        return load_epoch(store, epoch_rows(store, plan[key]), CPU, CPU, stop=stop)

    stream = EpochStream(failing_load, len(plan), last_epoch=3)
    stream.epoch(1)
    with pytest.raises(StoreFormatError, match="case1/image: unreadable"):
        stream.epoch(2)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_a_one_epoch_plan_is_loaded_once_and_reused():
    loads = []
    stream = EpochStream(lambda key, stop: loads.append(key) or object(), n_plan_epochs=1, last_epoch=4)
    held = [stream.epoch(e) for e in (1, 2, 3, 4)]
    stream.close()
    assert loads == [0] and all(h is held[0] for h in held)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """16 train cases of 80 slices with a lesion on one slice each, a short val case and a short test case."""
    cases = {f"t{i:02d}": short_lesion((16, 16, 80), i, range(40, 41)) for i in range(16)}
    cases |= {"val0": short_lesion((16, 16, 8), 20, range(4, 5)), "test0": short_lesion((16, 16, 8), 21, range(4, 5))}
    splits = {c: "train" for c in cases} | {"val0": "val", "test0": "test"}
    return build_store(tmp_path_factory.mktemp("big") / "store.zarr", cases, splits)


def test_a_store_ten_times_the_budget_trains_end_to_end(big_store, tmp_path):
    store = SliceStore.open(big_store)
    budget = parse_bytes("90KiB")
    assert resident_need(store, store.case_ids()) >= 10 * budget
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, augment=False, ratio=0.0, neighbours=0,
                      memory_budget="90KiB")
    log = io.StringIO()
    result = train(big_store, TINY, cfg, out=tmp_path / "run", console=Console(file=log, width=400))
    assert "streaming each plan epoch's rows from the store (--resident stream)" in log.getvalue()
    assert [r["epoch"] for r in result.rows] == [1, 2, 3] and (tmp_path / "run" / "last.pt").exists()
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_dice_3d"]) for r in result.rows)


def test_stream_run_equals_resident_run_and_resumes_after_a_kill(stream_store, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, deterministic=True, seed=1, ratio=0.4)
    resident = train(stream_store, TINY, cfg, out=tmp_path / "resident")
    streamed = replace(cfg, resident="stream")

    def kill(epoch: int, step: int) -> None:
        if (epoch, step) == (2, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(stream_store, TINY, streamed, out=tmp_path / "stream", on_step=kill)
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]  # joined on the way out
    train(stream_store, ModelConfig(), TrainConfig(), out=tmp_path / "stream", resume=True)
    keys = ["epoch", "train_loss", "val_loss", "val_dice_3d", "val_dice_slice", "lr"]
    metrics = {name: pd.read_csv(tmp_path / name / "metrics.csv")[keys] for name in ("stream", "resident")}
    pd.testing.assert_frame_equal(metrics["stream"], metrics["resident"])


def test_two_epochs_that_do_not_fit_the_budget_are_one_line(stream_store, tmp_path):
    args = ["train", str(stream_store), "--resident", "stream", "--memory-budget", "2KiB", "--epochs", "1",
            "--width", "4", "--depth", "2", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(model_app, args)
    assert result.exit_code == 2  # a usage error, like every refused option
    assert "plan epoch(s) of rows plus" in one_line_error(result) and "raise --memory-budget" in result.output


@pytest.mark.parametrize("options, expected", [
    (["--memory-budget", "lots"], "--memory-budget lots: expected a size such as 2GiB"),
    (["--resident", "disk"], "--resident disk: expected one of auto, device, host, stream"),
    (["--resident", "stream", "--semi", "mean-teacher"], "--semi mean-teacher with --resident stream"),
])
def test_cli_bad_stream_options_are_one_line(stream_store, tmp_path, options, expected):
    result = CliRunner().invoke(model_app, ["train", str(stream_store), "--epochs", "1", "--width", "4", "--depth",
                                            "2", "--out", str(tmp_path / "run"), *options])
    assert result.exit_code == 2 and expected in one_line_error(result)  # a usage error


@given(n=st.integers(1, 10**6), unit=st.sampled_from(["", "B", "KiB", "MiB", "GiB", "kb", "MB"]))
def test_parse_bytes_multiplies_by_the_unit(n, unit):
    factor = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kb": 10**3, "MB": 10**6}[unit]
    assert parse_bytes(f"{n}{unit}") == n * factor
    with pytest.raises(UsageError):
        parse_bytes(f"-{n}{unit}")


def test_validation_budget_counts_the_scored_volume_beside_the_stored_ones(stream_store):
    store = SliceStore.open(stream_store)
    pixels = 30 * store.layout.size ** 2  # every case has 30 slices
    stored = pixels * (np.dtype(store.layout.dtype).itemsize + 1)  # image + uint8 mask
    scoring = pixels * (4 + 1)  # the volume being scored: float32 image and bool prediction
    assert val_needs(store, ["case4", "case5"]) == (2 * stored + scoring, stored + scoring)
    assert val_needs(store, []) == (0, 0)


def test_default_memory_share_is_split_over_the_processes_on_one_node(stream_store, monkeypatch):
    store, cases = SliceStore.open(stream_store), ["case0", "case1", "case2", "case3"]
    need = resident_need(store, cases)
    available = int(need / HOST_MEMORY_SHARE * 2)  # the data takes half the default share of one process
    monkeypatch.setattr("ctmodel.batches.available_host_bytes", lambda: available)
    monkeypatch.setattr("ctmodel.stream.available_host_bytes", lambda: available)
    node = DistEnv.from_environ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert stream_reason(store, cases, CPU, TrainConfig()) is None  # alone it stays resident
    assert "streaming" in stream_reason(store, cases, CPU, TrainConfig(), node.local_world_size)  # a quarter: not
    assert default_budget(node.local_world_size) == int(HOST_MEMORY_SHARE * available / 4)
