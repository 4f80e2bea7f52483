"""Run by tests/ctmodel/test_distributed.py under torchrun (one process per rank, gloo on the CPU):
``ddp_worker.py GRAD_FILE STORE RUN_DIR`` saves rank 0's loss and gradients of one DDP step on a fixed global
batch split over the ranks (plain, with per-sample weights and a padding row, and accumulated over two
micro-batches), then trains STORE into RUN_DIR until a simulated kill in epoch 3 (exit code 3)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.distributed import (DistEnv, ddp_model, gradient_sync, max_across_ranks, process_group,
                                 sum_across_ranks)
from ctmodel.losses import GlobalDiceBCELoss
from ctmodel.nets import build_model
from ctmodel.train import train

TINY = ModelConfig(width=4, depth=2)
GLOBAL_BATCH = 4
ACCUMULATED = ((0, 2), (1, 3))  # two micro-batches of the fixed batch: (rank 0's sample, rank 1's sample) each
SAMPLE_WEIGHTS = (0.5, 0.5, 1.0, 0.0)  # pseudo rows of weight 0.5 and 0 among labeled ones; max 0.5 on rank 0 only
KILLED_IN_EPOCH = 3
RUN_CONFIG = TrainConfig(epochs=3, batch_size=4, lr=3e-3, device="cpu", deterministic=True, seed=1)


def fixed_batch(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch both the test (one process) and the ranks (a slice each) use: x (B, 3, S, S), y (B, 1, S, S)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(GLOBAL_BATCH, 3, size, size, generator=generator)
    y = (torch.rand(GLOBAL_BATCH, 1, size, size, generator=generator) > 0.7).float()
    return x, y


def save_gradients(dist: DistEnv, path: Path) -> None:
    """One forward/backward of the DDP model on this rank's share of the fixed batch, plain and weighted (the last
    rank also holds a padding copy of its first sample); rank 0 saves both losses and gradients."""
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = build_model(TINY)
    x, y = fixed_batch()
    share = GLOBAL_BATCH // dist.world_size
    mine = torch.arange(dist.rank * share, (dist.rank + 1) * share)
    real = torch.ones(share, dtype=torch.bool)
    if dist.rank == dist.world_size - 1:
        mine, real = torch.cat([mine, mine[:1]]), torch.cat([real, torch.tensor([False])])
    wrapped = ddp_model(model, dist, torch.device("cpu"), compile_model=False)
    loss_fn = GlobalDiceBCELoss(sum_across_ranks, max_across_ranks)
    saved = {}
    for name, weight in (("plain", None), ("weighted", torch.tensor(SAMPLE_WEIGHTS)[mine])):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(wrapped(x[mine]), y[mine], weight, real)
        loss.backward()
        saved[name] = {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
    saved["accumulated"] = accumulated_gradients(dist, model, wrapped, loss_fn)
    if dist.is_main:
        torch.save(saved, path)


def accumulated_gradients(dist: DistEnv, model: torch.nn.Module, wrapped: torch.nn.Module,
                          loss_fn: GlobalDiceBCELoss) -> dict:
    """One optimizer step's gradients over two micro-batches (``--accumulate 2``, one sample per rank each, the
    first under DDP's no_sync): micro-batch k holds samples ACCUMULATED[k] of the fixed batch."""
    x, y = fixed_batch()
    model.zero_grad(set_to_none=True)
    for k, group in enumerate(ACCUMULATED):
        mine = [group[dist.rank]]
        with gradient_sync(wrapped, sync=k == len(ACCUMULATED) - 1):
            (loss_fn(wrapped(x[mine]), y[mine]) * 0.5).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


class Killed(Exception):
    """The simulated kill."""


def kill_in_epoch_3(epoch: int, step: int) -> None:
    if epoch == KILLED_IN_EPOCH:
        raise Killed


def main(grad_file: str, store: str, run_dir: str) -> int:
    dist = DistEnv.from_environ(os.environ)
    with process_group(dist, "cpu"):  # one group for both parts: train() uses the one it finds
        save_gradients(dist, Path(grad_file))
        torch.use_deterministic_algorithms(False)  # train() sets the run's own mode
        try:
            train(Path(store), TINY, RUN_CONFIG, out=Path(run_dir), on_step=kill_in_epoch_3, dist=dist)
        except Killed:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
