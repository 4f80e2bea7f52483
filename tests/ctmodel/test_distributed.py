"""Data-parallel training with real gloo processes on the CPU (torchrun): the global-batch gradient equals one
process's, two ranks write one run folder that resumes on two ranks or on one; the case partition's invariants."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
from conftest import build_store, one_line_error, phantom, ras_affine
from ctmodel.batches import ResidentVolumes
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.distributed import (DistEnv, case_ranks, check_distributed, job_samples, partition_rows, rank_cases,
                                 rank_samples)
from ctmodel.losses import DiceBCELoss, GlobalDiceBCELoss
from ctmodel.nets import build_model
from ctmodel.session import resume_session
from ctmodel.train import train
from ctprep.errors import UsageError
from ctprep.store import SliceStore

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import ACCUMULATED, KILLED_IN_EPOCH, RUN_CONFIG, SAMPLE_WEIGHTS, TINY, fixed_batch  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]  # the checkout under test: the ranks import its code
GRADIENT_RTOL = 1e-5  # relative L2 error per parameter between N = 2 at B/2 and N = 1 at B (fp32 CPU)
GRADIENT_FLOOR = 1e-4  # gradients smaller in norm are compared to this (a 6e-6 one is fp32 cancellation noise)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Launch 2 gloo ranks on this machine with the checkout first on their path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A 16x16 store of six phantom chests: four train (two per rank), one val, one test."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(6)}
    splits = {f"case{i}": "train" for i in range(4)} | {"case4": "val", "case5": "test"}
    return build_store(tmp_path_factory.mktemp("s") / "store.zarr", cases, splits)


@pytest.fixture(scope="module")
def two_ranks(store, tmp_path_factory) -> dict:
    """One torchrun launch of tests/ctmodel/ddp_worker.py: the gradient of one DDP step, then two epochs of
    training into one run folder until the kill in epoch 3; also a copy of that folder taken before any resume."""
    folder = tmp_path_factory.mktemp("ddp")
    done = torchrun(str(ROOT / "tests/ctmodel/ddp_worker.py"), str(folder / "grad.pt"), str(store),
                    str(folder / "run"))
    assert done.returncode != 0 and "exitcode  : 3" in done.stderr, done.stderr[-3000:]
    assert "FutureWarning" not in done.stderr  # the loss's all-reduce is our own autograd function
    shutil.copytree(folder / "run", folder / "copy")
    return {"grad": folder / "grad.pt", "run": folder / "run", "copy": folder / "copy"}


@pytest.mark.parametrize("weights", [None, SAMPLE_WEIGHTS], ids=["plain", "weighted"])
def test_two_ranks_at_half_the_batch_give_the_one_process_loss_and_gradient(two_ranks, weights):
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        model = build_model(TINY)
        x, y = fixed_batch()
        extras = () if weights is None else (torch.tensor(weights),)
        loss = DiceBCELoss()(model(x), y, *extras)  # one process, the whole global batch, today's loss
        loss.backward()
    finally:
        torch.use_deterministic_algorithms(False)
    ranks = torch.load(two_ranks["grad"], weights_only=True)["plain" if weights is None else "weighted"]
    assert float(ranks["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    for name, param in model.named_parameters():
        error = (ranks["grads"][name] - param.grad).norm() / max(param.grad.norm(), GRADIENT_FLOOR)
        assert error < GRADIENT_RTOL, name


def test_two_ranks_accumulating_without_sync_give_the_one_process_accumulated_gradient(two_ranks):
    torch.manual_seed(0)
    model = build_model(TINY)
    x, y = fixed_batch()
    for group in ACCUMULATED:  # --accumulate 2 in one process: each micro-batch's loss at half weight
        (DiceBCELoss()(model(x[list(group)]), y[list(group)]) * 0.5).backward()
    ranks = torch.load(two_ranks["grad"], weights_only=True)["accumulated"]
    for name, param in model.named_parameters():
        error = (ranks[name] - param.grad).norm() / max(param.grad.norm(), GRADIENT_FLOOR)
        assert error < GRADIENT_RTOL, name


def test_two_ranks_write_one_run_folder_with_plain_checkpoints(two_ranks):
    run = two_ranks["copy"]
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "config.json", "curves.png", "last.pt",
                                                     "metrics.csv", "plan.parquet"]  # no summary: killed in epoch 3
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(1, KILLED_IN_EPOCH))
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == KILLED_IN_EPOCH - 1
    assert set(last["model"]) == set(build_model(TINY).state_dict())  # unwrapped: no "module." prefix
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == RUN_CONFIG.batch_size


def test_resume_with_torchrun_on_two_ranks_finishes_the_run(two_ranks, store):
    done = torchrun("--no-python", sys.executable, "-c", "import cli; cli.model_app()", "train", str(store),
                    "--out", str(two_ranks["run"]), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ctmodel train ->") == 1  # rank 0 alone prints the summary
    metrics = pd.read_csv(two_ranks["run"] / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    copy = pd.read_csv(two_ranks["copy"] / "metrics.csv")
    pd.testing.assert_frame_equal(metrics.iloc[:2], copy)  # epochs 1-2 kept as written
    assert json.loads((two_ranks["run"] / "summary.json").read_text())["epochs"] == 3


def test_a_bad_run_folder_stops_every_rank_with_one_line_each(two_ranks, store):
    done = torchrun("--no-python", sys.executable, "-c", "import cli; cli.model_app()", "train", str(store),
                    "--out", str(two_ranks["run"]), "--device", "cpu")  # holds a run, and no --resume
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(lines) == 2, done.stderr[-3000:]
    assert "already holds a run; pass --resume" in lines[0] + lines[1]
    assert "rank 0 of 2 stopped with an error" in lines[0] + lines[1]


def test_a_two_rank_run_resumes_on_one_process(two_ranks, store):
    resumed = train(store, ModelConfig(), TrainConfig(), out=two_ranks["copy"], resume=True)
    assert [row["epoch"] for row in resumed.rows] == [1, 2, 3]
    assert not torch.distributed.is_initialized()
    assert torch.load(two_ranks["copy"] / "last.pt", weights_only=True)["epoch"] == 3


def test_one_process_never_creates_a_process_group(store, tmp_path):
    seen = []
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", augment=False)
    train(store, TINY, cfg, out=tmp_path / "run", on_step=lambda e, s: seen.append(torch.distributed.is_initialized()),
          dist=DistEnv.from_environ({}))
    assert seen and not any(seen)


def same(values: torch.Tensor) -> torch.Tensor:
    """The reduction over one rank: the values themselves."""
    return values


@pytest.mark.parametrize("weights", [None, [1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5],
                                     [0.0, 0.0, 0.0, 0.0]])
def test_global_loss_on_one_rank_is_the_one_process_weighted_loss(weights):
    x, y = fixed_batch()
    logits = torch.randn(x.shape[0], 1, *x.shape[2:], generator=torch.Generator().manual_seed(2))
    extras = () if weights is None else (torch.tensor(weights),)
    assert float(GlobalDiceBCELoss(same, same)(logits, y, *extras)) == pytest.approx(
        float(DiceBCELoss()(logits, y, *extras)), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 0.0]])
def test_padding_rows_count_nowhere_but_weight_zero_rows_count_in_the_batch(weights):
    x, y = fixed_batch()
    logits = torch.randn(x.shape[0], 1, *x.shape[2:], generator=torch.Generator().manual_seed(3))
    rows, real = torch.tensor([0, 1, 2, 0]), torch.tensor([True, True, True, False])  # row 0 copied as padding
    weight = None if weights is None else torch.tensor(weights + [1.0])  # padding copies its row's weight
    padded = GlobalDiceBCELoss(same, same)(logits[rows], y[rows], weight, real)
    extras = () if weights is None else (torch.tensor(weights),)
    assert float(padded) == pytest.approx(float(DiceBCELoss()(logits[:3], y[:3], *extras)), rel=1e-6)


def test_torchrun_environment_is_read_and_checked():
    assert DistEnv.from_environ({}) == DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    assert DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                 "LOCAL_WORLD_SIZE": "4"}).local_world_size == 4
    assert DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "3"}).local_world_size == 3  # unknown: all on this node
    with pytest.raises(UsageError, match="LOCAL_WORLD_SIZE=3"):
        DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"})
    assert not DistEnv.from_environ({"WORLD_SIZE": "1", "RANK": "0"}).enabled
    env = DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env.enabled and not env.is_main and env.local_rank == 1
    with pytest.raises(UsageError, match="RANK=4 WORLD_SIZE=4"):
        DistEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UsageError, match="expected an integer"):
        DistEnv.from_environ({"WORLD_SIZE": "two"})


def test_global_batch_that_the_ranks_do_not_divide_is_one_line(store, tmp_path):
    with pytest.raises(UsageError, match=r"multiple of 4\); use --batch-size 8"):
        check_distributed(DistEnv(rank=0, world_size=4), TINY, TrainConfig(batch_size=10))
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    result = CliRunner().invoke(model_app, ["train", str(store), "--batch-size", "5", "--device", "cpu",
                                            "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 2 and "must split evenly over the 2 processes" in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_resume_checks_the_saved_batch_size_not_the_command_line_default(store, tmp_path):
    train(store, TINY, TrainConfig(epochs=1, batch_size=5, device="cpu", augment=False), out=tmp_path / "run")
    with pytest.raises(UsageError, match=r"--batch-size 5: .*multiple of 2"):  # the CLI's default 16 would divide
        resume_session(SliceStore.open(store), tmp_path / "run", ModelConfig(), TrainConfig(), frozenset(),
                       Console(quiet=True), DistEnv(rank=0, world_size=2))


def test_more_ranks_than_train_cases_is_refused():
    slices = pd.DataFrame({"epoch": 0, "case_id": ["a", "a", "b"], "slice": [0, 1, 0]})
    with pytest.raises(UsageError, match="launch at most 2 processes"):
        rank_cases(DistEnv(rank=0, world_size=3), slices, [], seed=0)


def test_a_plan_epoch_that_leaves_a_rank_without_rows_is_refused_before_training():
    both = pd.DataFrame({"epoch": [0, 0, 0, 1, 1], "case_id": ["a", "a", "b", "a", "b"], "slice": [0, 1, 0, 2, 1]})
    assert rank_cases(DistEnv(rank=1, world_size=2), both, [], seed=0) == ["b"]  # a (3 rows) on rank 0, b on 1
    b_once = both.assign(case_id=["a", "a", "b", "a", "a"])  # b only in plan epoch 0: rank 1 idle in epoch 1
    for rank in range(2):  # every rank refuses, with the same line
        with pytest.raises(UsageError, match=r"plan epoch 1 with 2 processes: ranks \[1\] get no rows.*launch fewer"):
            rank_cases(DistEnv(rank=rank, world_size=2), b_once, [], seed=0)


def test_each_rank_holds_its_own_cases_and_rank_0_the_val_cases():
    slices = pd.DataFrame({"epoch": 0, "case_id": ["a"] * 5 + ["b"] * 3 + ["c"] * 2, "slice": range(10)})
    held = [rank_cases(DistEnv(rank=r, world_size=2), slices, ["v"], seed=0) for r in range(2)]
    assert held == [["a", "v"], ["b", "c"]]  # a (5 rows) on rank 0, then b and c on the lighter rank 1


@st.composite
def plans(draw) -> pd.DataFrame:
    """A plan of 1..4 epochs over 1..12 cases, each case 0..20 rows per epoch (at least one row overall)."""
    n_cases, n_epochs = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    rows = [(epoch, f"c{case:02d}", z) for epoch in range(n_epochs) for case in range(n_cases)
            for z in range(draw(st.integers(0, 20)))]
    return pd.DataFrame(rows or [(0, "c00", 0)], columns=["epoch", "case_id", "slice"])


@settings(max_examples=60, deadline=None)
@given(plan=plans(), world_size=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_partition_covers_each_epoch_once_without_splitting_a_case(plan, world_size, seed):
    owner = case_ranks(plan, world_size, seed)
    assert owner == case_ranks(plan, world_size, seed)  # deterministic in (plan, seed, N)
    assert set(owner) == set(plan["case_id"]) and set(owner.values()) <= set(range(world_size))
    for _epoch, rows in plan.groupby("epoch"):
        shares = partition_rows(rows, owner, world_size)
        assert sorted(pd.concat(shares).index) == sorted(rows.index)  # union == the epoch's plan, no repeats
        for rank, share in enumerate(shares):
            assert all(owner[c] == rank for c in share["case_id"])  # no case on two ranks
    load = np.bincount([owner[c] for c in plan["case_id"]], minlength=world_size)
    assert load.max() - load.min() <= plan["case_id"].value_counts().max()  # within one case's rows


def fake_data(cases: list[str], n_slices: int) -> ResidentVolumes:
    """Cases of ``n_slices`` blank 2x2 slices, enough to build sample index tensors."""
    total = len(cases) * n_slices
    return ResidentVolumes(images=torch.zeros(total, 2, 2), masks=torch.zeros(total, 2, 2, dtype=torch.uint8),
                           case_ids=cases, starts=torch.arange(len(cases)) * n_slices,
                           n_slices=torch.full((len(cases),), n_slices), device=torch.device("cpu"))


def test_ranks_take_equal_steps_and_their_real_samples_are_the_epoch_plan():
    plan = pd.DataFrame({"epoch": 0, "case_id": ["a"] * 6 + ["b"] * 3 + ["c"] * 2,
                         "slice": [0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1], "role": ["lesion"] * 9 + ["pseudo"] * 2})
    data = fake_data(["a", "b", "c"], 6)
    trained, lengths, weights = [], set(), {}
    for rank in range(2):
        samples = rank_samples(DistEnv(rank=rank, world_size=2), data, plan, plan, seed=0, pseudo_weight=0.0)
        lengths.add(len(samples))
        real = samples.real if samples.real is not None else torch.ones(len(samples), dtype=torch.bool)
        rows = [(data.case_ids[int(c)], int(z)) for c, z in zip(samples.case_pos[real], samples.slice_index[real])]
        trained += rows
        weights |= dict(zip(rows, (samples.weight[real] if samples.weight is not None else torch.ones(len(rows)))
                            .tolist()))
        assert samples.n_real() == len(rows)
        assert job_samples(DistEnv(rank=rank, world_size=2), samples, plan) == len(plan)  # padding not counted
    assert lengths == {6}  # rank 1 (b + c: 5 rows) padded with one copy marked not real to rank 0's 6
    assert sorted(trained) == sorted(zip(plan["case_id"], plan["slice"]))
    assert weights[("c", 0)] == weights[("c", 1)] == 0.0 and weights[("b", 0)] == 1.0  # weight 0, yet real


def test_two_ranks_stream_the_same_batches_as_they_hold_resident(store, tmp_path):
    args = ["--epochs", "2", "--width", "4", "--depth", "2", "--batch-size", "4", "--device", "cpu",
            "--deterministic", "--no-augment"]
    losses = {}
    for mode in ("host", "stream"):
        done = torchrun("--no-python", sys.executable, "-c", "import cli; cli.model_app()", "train", str(store),
                        *args, "--resident", mode, "--out", str(tmp_path / mode))
        assert done.returncode == 0, done.stderr[-3000:]
        losses[mode] = pd.read_csv(tmp_path / mode / "metrics.csv")["train_loss"].tolist()
    assert losses["stream"] == losses["host"] and len(losses["host"]) == 2
