"""Data-parallel training across processes launched by torchrun: the launch environment, the process group,
rank-0 helpers, the global-batch all-reduce, and the per-epoch partition of plan rows across ranks by case.

Example: torchrun --standalone --nproc-per-node 4 $(which ctmodel) train store.zarr --batch-size 32
(docs/scaling.md). One process (no WORLD_SIZE, or WORLD_SIZE=1) never creates a process group.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from ctmodel.device import resolve_device
from ctprep.errors import CtstackError, RunError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from ctmodel.batches import EpochSamples, ResidentVolumes
    from ctmodel.config import ModelConfig, TrainConfig

T = TypeVar("T")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")  # what torchrun sets per process
GROUP_TIMEOUT = timedelta(hours=1)  # ranks > 0 wait at a barrier while rank 0 validates and saves checkpoints
CASE_MAP_SALT = 7_919  # seeds the tie-break permutation of the case -> rank map apart from the plan's own draws


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a torchrun job; the default is the single process."""

    rank: int = 0  # global rank, 0..world_size - 1
    world_size: int = 1  # processes in the job (N)
    local_rank: int = 0  # rank on this node: the CUDA device index
    local_world_size: int = 1  # processes on this node, which share its host memory

    def __post_init__(self) -> None:
        if (self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0
                or not 1 <= self.local_world_size <= self.world_size):
            raise UsageError(f"torchrun environment RANK={self.rank} WORLD_SIZE={self.world_size} LOCAL_RANK="
                             f"{self.local_rank} LOCAL_WORLD_SIZE={self.local_world_size}: expected 0 <= RANK < "
                             "WORLD_SIZE, LOCAL_RANK >= 0 and 1 <= LOCAL_WORLD_SIZE <= WORLD_SIZE; launch with "
                             "torchrun or set all four")

    @property
    def enabled(self) -> bool:
        """Whether this run has more than one process (and so a process group)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates and writes the run folder."""
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "DistEnv":
        """The launch variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); the single process
        without them. Without LOCAL_WORLD_SIZE every process counts as on this node (the safe memory share)."""
        values = {}
        for name in LAUNCH_VARIABLES:
            default = {"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": environ.get("WORLD_SIZE", "1")}.get(name, "0")
            text = environ.get(name, default)
            try:
                values[name] = int(text)
            except ValueError as err:
                raise UsageError(f"environment {name}={text!r}: expected an integer (torchrun sets it); unset it "
                                 "or launch with torchrun") from err
        return cls(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"],
                   local_world_size=values["LOCAL_WORLD_SIZE"])


SINGLE = DistEnv()


def rank_device(dist: DistEnv, name: str) -> torch.device:
    """The training device: ``--device`` as resolved today, on CUDA the local rank's GPU when distributed."""
    device = resolve_device(name)
    if dist.enabled and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


@contextmanager
def process_group(dist: DistEnv, device_name: str) -> Iterator[None]:
    """Initialise the default process group (nccl on CUDA, gloo on CPU; rendezvous from torchrun's MASTER_ADDR /
    MASTER_PORT) for the run and destroy it on exit, errors included; nothing at all for one process. A group
    the caller already initialised is used as it is and left to the caller."""
    import torch.distributed as tdist

    if not dist.enabled or tdist.is_initialized():
        yield
        return

    device = rank_device(dist, device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                             rank=dist.rank, world_size=dist.world_size, timeout=GROUP_TIMEOUT)
    try:
        yield
    finally:
        tdist.destroy_process_group()


def barrier(dist: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()


def broadcast_object(dist: DistEnv, value: T) -> T:
    """Rank 0's ``value`` on every rank (e.g. the default run folder, whose name holds rank 0's clock)."""
    if not dist.enabled:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def agreed(dist: DistEnv, build: Callable[[], T]) -> T:
    """``build()`` on every rank; when it raises a ctstack error on any rank, every rank stops: that rank with its
    own one-line error, the others with a RunError naming it (no rank is left waiting in a collective)."""
    try:
        value = build()
    except CtstackError:
        _failed_ranks(dist, failed=True)
        raise
    failed = _failed_ranks(dist, failed=False)
    if failed:
        raise RunError(f"rank {failed[0]} of {dist.world_size} stopped with an error (printed by that rank); "
                       "fix it and launch again")
    return value


def check_same_plan(dist: DistEnv, slices: pd.DataFrame) -> None:
    """RunError on every rank unless every rank built the same plan as rank 0 (the plan is seeded, so it is
    rebuilt on each rank rather than sent; this catches a store or plan file that differs between nodes)."""
    if not dist.enabled:
        return
    from ctmodel.runfolder import plan_hash

    mine = plan_hash(slices)
    differ = _failed_ranks(dist, failed=broadcast_object(dist, mine) != mine)
    if differ:
        raise RunError(f"rank {differ[0]} of {dist.world_size}: its plan differs from rank 0's (expected the same "
                       "store and plan on every node); point every node at the same files")


def _failed_ranks(dist: DistEnv, failed: bool) -> list[int]:
    """The ranks that report a failure (every rank calls this once per agreement)."""
    if not dist.enabled:
        return []
    import torch.distributed as tdist

    on_gpu = tdist.get_backend() == "nccl"  # nccl reduces device tensors only, gloo host tensors
    flags = torch.zeros(dist.world_size, dtype=torch.int64,
                        device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else None)
    flags[dist.rank] = int(failed)
    tdist.all_reduce(flags)
    return [int(r) for r in torch.nonzero(flags).flatten()]


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Autograd-aware sum over ranks: the backward all-reduces the gradient too, so with DDP's averaging of N rank
    gradients the step's gradient is that of the global loss."""
    return _SumAcrossRanks.apply(values)


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) forward and backward: torch.distributed.nn's all_reduce, without its deprecation warning."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        return _all_reduced(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _all_reduced(grad)


def _all_reduced(values: torch.Tensor) -> torch.Tensor:
    """A summed-over-ranks copy of ``values`` (the collective works in place)."""
    import torch.distributed as tdist

    out = values.detach().clone(memory_format=torch.contiguous_format)
    tdist.all_reduce(out)
    return out


def max_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks, outside autograd (for constants such as the largest sample weight)."""
    import torch.distributed as tdist

    out = values.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out


def ddp_model(model: torch.nn.Module, dist: DistEnv, device: torch.device, compile_model: bool) -> torch.nn.Module:
    """The model as training uses it: unchanged for one process; else DistributedDataParallel (torch.compile
    around it with --compile). Parameters are broadcast from rank 0 here."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if compile_model else wrapped


def gradient_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager:
    """DDP's ``no_sync()`` for a micro-batch that does not end its optimizer step (its gradients stay local and the
    step's last backward all-reduces their sum, the same average); nothing for one process or when ``sync``."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner.no_sync() if not sync and isinstance(inner, DistributedDataParallel) else nullcontext()


def local_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DistributedDataParallel wrapper (for rank 0's validation: no collective in forward)."""
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)
    return inner.module if isinstance(inner, DistributedDataParallel) else model


def check_distributed(dist: DistEnv, model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Refuse (one line) what a distributed run cannot do: a global batch N does not divide, and the modes whose
    loss is not yet global (unet3d patches, --target ugs, --semi mean-teacher)."""
    if not dist.enabled:
        return
    n = dist.world_size
    if cfg.batch_size % n:
        raise UsageError(f"--batch-size {cfg.batch_size}: the global batch must split evenly over the {n} "
                         f"processes (expected a multiple of {n}); use --batch-size {max(n, cfg.batch_size // n * n)}")
    refused = {"--model unet3d": model_cfg.volumetric, f"--target {cfg.target}": cfg.target == "ugs",
               f"--semi {cfg.semi}": cfg.semi != "none"}
    for option, used in refused.items():
        if used:
            raise UsageError(f"{option} with {n} processes: expected a one-process run for this mode (its loss is "
                             "not all-reduced across ranks); launch it without torchrun")


def job_samples(dist: DistEnv, samples: EpochSamples, rows: pd.DataFrame) -> int:
    """Samples the whole job trains in an epoch, padding excluded: with N ranks the epoch's plan rows (each trained
    once, on one rank), else this process's samples."""
    return len(rows) if dist.enabled else samples.n_real()


def per_rank_batch(batch_size: int, dist: DistEnv) -> int:
    """Samples per rank per micro-batch: the global --batch-size over N (check_distributed made it divide)."""
    return batch_size // dist.world_size


def case_ranks(slices: pd.DataFrame, world_size: int, seed: int) -> dict[str, int]:
    """The rank that trains each case of the plan, from (plan, seed, N) only: a greedy balance of the cases' row
    counts over every plan epoch, largest case first onto the lightest rank (lowest rank on ties), cases of equal
    count in a seeded random order. Fixed over the epochs, so the data each rank holds shrinks with N."""
    counts = slices["case_id"].astype(str).value_counts()
    cases = np.array(sorted(counts.index))
    tie_break = np.random.default_rng([seed, CASE_MAP_SALT]).permutation(len(cases))
    order = np.lexsort((tie_break, -counts.reindex(cases).to_numpy()))  # count descending, then seeded
    load, owner = np.zeros(world_size, dtype=np.int64), {}
    for i in order:
        rank = int(np.argmin(load))
        owner[str(cases[i])] = rank
        load[rank] += int(counts[cases[i]])
    return owner


def partition_rows(rows: pd.DataFrame, owner: Mapping[str, int], world_size: int) -> list[pd.DataFrame]:
    """One plan epoch's rows split by rank (each case wholly on its owner's rank), in the plan's order."""
    ranks = rows["case_id"].astype(str).map(owner).to_numpy()
    return [rows[ranks == r] for r in range(world_size)]


def rank_cases(dist: DistEnv, slices: pd.DataFrame, val_ids: list[str], seed: int) -> list[str]:
    """The cases this rank holds: its own plan cases, and on rank 0 the val cases (it validates alone)."""
    if not dist.enabled:
        return sorted(set(slices["case_id"].astype(str)) | set(val_ids))
    owner = case_ranks(slices, dist.world_size, seed)
    empty = sorted(set(range(dist.world_size)) - set(owner.values()))
    if empty:
        raise UsageError(f"{dist.world_size} processes, the plan has {len(owner)} train cases: expected at least one "
                         f"case per rank (ranks {empty[:3]} get none); launch at most {len(owner)} processes")
    check_epoch_shares(slices, owner, dist.world_size)
    own = {case for case, rank in owner.items() if rank == dist.rank}
    return sorted(own | (set(val_ids) if dist.is_main else set()))


def check_epoch_shares(slices: pd.DataFrame, owner: Mapping[str, int], world_size: int) -> None:
    """UsageError (the same on every rank: it depends on the plan alone) unless every plan epoch gives each rank
    at least one row of its cases; the case map is fixed over the epochs, so a rank may own no row of some epoch."""
    for epoch, rows in slices.groupby("epoch", sort=True):
        empty = [rank for rank, share in enumerate(partition_rows(rows, owner, world_size)) if share.empty]
        if empty:
            raise UsageError(f"plan epoch {epoch} with {world_size} processes: ranks {empty[:3]} get no rows of "
                             "their cases (expected at least one per rank in every epoch; each case stays on one "
                             "rank for the whole run); launch fewer processes")


def rank_plan(dist: DistEnv, epochs: list[pd.DataFrame], seed: int) -> list[pd.DataFrame]:
    """Each plan epoch's rows of this rank's cases (all of them on one process): what ``--resident stream``
    loads on this rank, so streamed data shrinks with N like resident data."""
    import pandas as pd

    if not dist.enabled:
        return epochs
    owner = case_ranks(pd.concat(epochs), dist.world_size, seed)
    return [rows[rows["case_id"].astype(str).map(owner) == dist.rank] for rows in epochs]


def rank_samples(dist: DistEnv, data: ResidentVolumes, rows: pd.DataFrame, all_rows: pd.DataFrame, seed: int,
                 pseudo_weight: float) -> EpochSamples:
    """This rank's samples of one plan epoch (``rows``; ``all_rows`` is the whole plan, which fixes the case map),
    padded to the heaviest rank's count with copies of its own rows marked not ``real``, so every rank takes the
    same number of steps (DDP all-reduces each backward) and each plan row counts exactly once per epoch."""
    from ctmodel.batches import EpochSamples, epoch_samples

    if not dist.enabled:
        return epoch_samples(data, rows, pseudo_weight)
    shares = partition_rows(rows, case_ranks(all_rows, dist.world_size, seed), dist.world_size)
    own = epoch_samples(data, shares[dist.rank], pseudo_weight)
    assert len(own), "rank_cases refused a plan epoch without rows on some rank"
    fill = torch.arange(max(len(share) for share in shares) - len(own), device=data.device) % len(own)
    real = torch.arange(len(own) + len(fill), device=data.device) < len(own)
    return EpochSamples(case_pos=torch.cat([own.case_pos, own.case_pos[fill]]),
                        slice_index=torch.cat([own.slice_index, own.slice_index[fill]]),
                        weight=None if own.weight is None else torch.cat([own.weight, own.weight[fill]]), real=real)
