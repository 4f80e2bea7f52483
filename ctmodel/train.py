"""Training: ``train()`` runs epochs of resident-loader batches, validates on whole val volumes, and keeps
the run folder (config.json, metrics.csv, curves.png, last.pt, best.pt, summary.json) up to date.

Example: train(Path("store.zarr"), ModelConfig(), TrainConfig(epochs=50), out=Path("runs/dual"))
"""
from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from ctmodel.augment import augment_batch
from ctmodel.batches import iterate_batches, patch_shape, patches_per_step, volumetric_subset
from ctmodel.checkpoint import atomic_save, checkpoint_payload
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.curves import append_metrics, plot_curves, read_metrics
from ctmodel.device import autocast, inference_batch, memory_format
from ctmodel.distributed import (SINGLE, DistEnv, agreed, barrier, broadcast_object, check_distributed,
                                 check_same_plan, ddp_model, gradient_sync, job_samples, local_model, per_rank_batch,
                                 process_group, rank_samples)
from ctmodel.losses import consensus_loss
from ctmodel.nets import count_parameters
from ctmodel.runfolder import (CHECKPOINT_FILES, CONFIG_FILE, CURVES_FILE, METRICS_FILE, SUMMARY_FILE,
                               default_run_dir, write_summary)
from ctmodel.session import Session, open_session
from ctmodel.validate import ValResult, validate
from ctprep.console import make_console, progress_bar, rate_text
from ctprep.errors import RunError
from ctprep.store import SliceStore

StepHook = Callable[[int, int], None]  # (epoch, step) after every optimizer step (not micro-batch)
BAR_EVERY = 10  # optimizer steps between progress-bar refreshes (each one syncs the GPU for the loss value)


@dataclass
class TrainResult:
    """What a finished run reports: its folder, summary and per-epoch rows."""

    run_dir: Path
    summary: dict
    rows: list[dict]

    def summary_rows(self) -> list[tuple[str, object]]:
        """The summary as `ctmodel train` prints it: model, size, epochs, Dice, speed and memory."""
        s = self.summary
        return [("model", f"{s['model']} (width {s['width']})"), ("parameters", s["parameters"]),
                ("epochs", s["epochs"]), ("best epoch", s["best_epoch"]), ("best val Dice 3-D", s["best_val_dice_3d"]),
                ("final val Dice 3-D", s["final_val_dice_3d"]), ("final val slice Dice", s["final_val_dice_slice"]),
                ("samples/s", s["samples_per_s"]), ("train seconds", s["train_seconds"]),
                ("peak memory MiB", s["peak_memory_mb"])]

    def files(self) -> list[tuple[str, Path]]:
        """(name, path) of the files the run folder holds, in the order `ctmodel train` lists them."""
        names = (CONFIG_FILE, METRICS_FILE, CURVES_FILE, CHECKPOINT_FILES["best"], CHECKPOINT_FILES["last"],
                 SUMMARY_FILE)
        return [(name, self.run_dir / name) for name in names]


def train(store_path: Path, model_cfg: ModelConfig = ModelConfig(), cfg: TrainConfig = TrainConfig(),
          out: Path | None = None, plan_path: Path | None = None, resume: bool = False,
          explicit: frozenset[str] = frozenset(), on_step: StepHook | None = None,
          console: Console | None = None, dist: DistEnv = SINGLE) -> TrainResult:
    """Train a model on ``store_path`` and write the run folder ``out`` (default runs/<model>-<time>).

    With ``resume``, continue ``out`` from its last.pt with the saved configs and plan; options named in
    ``explicit`` (given on the command line) must equal the saved ones. The run folder is locked throughout:
    a second train into it raises RunLockedError at once. With ``dist`` (torchrun, N > 1) every rank calls this:
    rank 0 holds the lock, validates and writes the folder (docs/scaling.md).
    """
    console = console or make_console(stderr=True)
    console = console if dist.is_main else Console(quiet=True)
    store = SliceStore.open(store_path)
    if resume and out is None:
        raise RunError("--resume needs --out RUN_DIR: the run folder to continue")
    if not resume:  # a resumed run's configs come from its folder: resume_session checks those
        check_distributed(dist, model_cfg, cfg)
    with process_group(dist, cfg.device), ExitStack() as held:
        run_dir = broadcast_object(dist, Path(out) if out is not None else default_run_dir(model_cfg.name))
        session = agreed(dist, lambda: open_session(held, store, run_dir, model_cfg, cfg, plan_path, resume,
                                                    explicit, console, dist))
        if session.stream is not None:
            held.callback(session.stream.close)  # joins the loader thread, also when an epoch failed
        check_same_plan(dist, session.all_rows)
        session.model = ddp_model(session.model, dist, session.device, session.cfg.compile)
        for epoch in range(session.start_epoch, session.cfg.epochs + 1):
            run_epoch(session, epoch, on_step, console)
        summary = finish(session)
    return TrainResult(run_dir, summary, session.rows)


def epoch_generators(cfg: TrainConfig, epoch: int, device: torch.device,
                     rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """(shuffle, augment) generators seeded from (seed, epoch), the augmentation's also from the rank (each rank
    draws its own): an epoch replays exactly after a resume on the same number of processes."""
    shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    augment = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch + 500_000 + 100_000 * rank)
    return shuffle, augment


def run_epoch(session: Session, epoch: int, on_step: StepHook | None, console: Console) -> None:
    """Train one epoch, validate, append metrics, redraw curves, save last.pt (and best.pt)."""
    start = time.perf_counter()
    lr = session.optimizer.param_groups[0]["lr"]
    train_loss, samples, train_seconds = train_one_epoch(session, epoch, on_step, console)
    session.scheduler.step()
    val = validate(local_model(session.model), session.data, session.val_ids, consensus_loss(session.loss_fn),
                   inference_batch(session.device, session.cfg.val_batch_size), session.cfg.precision
                   ) if session.dist.is_main else ValResult()  # the other ranks wait at the barrier below
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val.loss, "val_dice_3d": val.dice_3d,
           "val_dice_slice": val.dice_slice, "val_iou_slice": val.iou_slice, "lr": lr,
           "seconds": time.perf_counter() - start,
           "samples_per_s": samples / train_seconds,
           "peak_mem_mb": peak_memory_mb(session.device)}
    if session.semi is not None:
        row.update(session.semi.epoch_metrics())
    if session.dist.is_main:
        record_epoch(session, epoch, row, val)
    else:
        session.rows.append(row)
    barrier(session.dist)  # rank 0's checkpoint is on disk before any rank trains on
    console.print(f"epoch {epoch}/{session.cfg.epochs}  loss {train_loss:.4f}  val loss {val.loss:.4f}  "
                  f"val Dice 3-D {val.dice_3d:.4f}  slice Dice {val.dice_slice:.4f}  IoU {val.iou_slice:.4f}  "
                  f"lr {lr:.2e}  {row['samples_per_s']:.1f} samples/s  {row['seconds']:.1f} s")


def train_one_epoch(session: Session, epoch: int, on_step: StepHook | None,
                    console: Console) -> tuple[float, int, float]:
    """One pass over the plan epoch's samples, ``accumulate`` micro-batches per optimizer step (DDP syncs
    gradients on the last one only); returns (mean loss per sample, samples the whole job trained, seconds)."""
    cfg, model = session.cfg, session.model
    waiting = time.perf_counter()  # a streamed epoch not loaded yet: the wait counts in samples/s
    data = session.data if session.stream is None else session.stream.epoch(epoch)
    waited = time.perf_counter() - waiting
    rows = session.plan[(epoch - 1) % len(session.plan)]
    samples = rank_samples(session.dist, data, rows, session.all_rows, cfg.seed, cfg.pseudo_weight)
    shuffle, aug = epoch_generators(cfg, epoch, session.device, session.dist.rank)
    patch, batch_size = patch_shape(session.model_cfg, session.layout.size), per_rank_batch(cfg.batch_size,
                                                                                            session.dist)
    if patch is not None:  # unet3d: the 2.5D models' steps per epoch, about batch_size slices per step
        samples = volumetric_subset(samples, cfg.batch_size, patch[0], shuffle)
        batch_size = patches_per_step(cfg.batch_size, patch[0])
    groups = accumulation_weights(len(samples), batch_size, cfg.accumulate)
    if session.semi is not None:
        session.semi.begin_epoch(session.data, epoch, len(samples),
                                 inference_batch(session.device, cfg.val_batch_size), cfg.precision)
    loss_sum = torch.zeros((), device=session.device)
    seen, step = 0, 0
    model.train()
    start = time.perf_counter()
    with progress_bar("samples", console) as bar:
        task = bar.add_task(f"epoch {epoch}", total=len(samples), rate="", status="")
        batches = iterate_batches(data, samples, batch_size, shuffle, patch=patch)
        for micro, ((x, y, *extras), (weight, first, last)) in enumerate(zip(batches, groups)):
            if first:
                session.optimizer.zero_grad(set_to_none=True)
            with gradient_sync(model, sync=last):
                loss_sum += micro_batch_backward(session, x, y, aug, weight, extras, epoch - 1 + micro / len(groups))
            seen += x.shape[0]
            if not last:
                continue
            session.optimizer.step()
            if session.semi is not None:
                session.semi.update(model)
            step += 1
            if on_step is not None:
                on_step(epoch, step)
            if step % BAR_EVERY == 0 or seen == len(samples):
                bar.update(task, completed=seen, status=f"loss {float(loss_sum) / seen:.4f}",
                           rate=rate_text(seen, time.perf_counter() - start, "samples"))
    trained = job_samples(session.dist, samples, rows)
    return float(loss_sum) / len(samples), trained, time.perf_counter() - start + waited


def micro_batch_backward(session: Session, x: torch.Tensor, y: torch.Tensor, aug: torch.Generator, weight: float,
                         extras: list[torch.Tensor | None], progress_epochs: float) -> torch.Tensor:
    """Backward of one labeled micro-batch and, with --semi, of the consistency on an unlabeled micro-batch of the
    same size; returns the labeled loss times the micro-batch's samples (detached, no GPU sync)."""
    loss = forward_backward(session, x, y, aug, weight, *extras).detach() * x.shape[0]
    if session.semi is not None:
        session.semi.backward(session.model, session.data, x.shape[0], weight, progress_epochs,
                              session.cfg.augment, session.device)
    return loss


def accumulation_weights(n_samples: int, batch_size: int, accumulate: int) -> list[tuple[float, bool, bool]]:
    """Per micro-batch of an epoch: (loss weight, first of its group, last of its group).

    ``accumulate`` consecutive micro-batches form one optimizer step; a micro-batch's weight is its share of the
    group's samples (1/accumulate for full groups), so the step's gradient is that of the per-sample-weighted
    mean of the micro-batch losses. A shorter final group (the epoch's leftover) still steps, weighted by its
    own samples.
    """
    sizes = [min(batch_size, n_samples - start) for start in range(0, n_samples, batch_size)]
    out = []
    for first in range(0, len(sizes), accumulate):
        group = sizes[first:first + accumulate]
        out += [(size / sum(group), i == 0, i == len(group) - 1) for i, size in enumerate(group)]
    return out


def forward_backward(session: Session, x: torch.Tensor, y: torch.Tensor, aug: torch.Generator,
                     weight: float = 1.0, *extras: torch.Tensor | None) -> torch.Tensor:
    """Augment, forward under autocast, loss (with ``extras``: per-sample weights (B,), and with N ranks the real
    mask (B,) that excludes padding), backward of ``weight`` x loss (gradients add up in .grad); returns the
    unweighted loss (no GPU sync)."""
    if session.cfg.augment and x.ndim == 5:  # unet3d patches: one geometry for every slice of a sample
        x, flat = augment_batch(x[:, 0], y.flatten(1, 2), aug)  # targets (B, C * depth, S, S)
        x, y = x[:, None], flat.view(y.shape)
    elif session.cfg.augment:
        x, y = augment_batch(x, y, aug)
    if session.cfg.channels_last and session.device.type == "cuda":
        x = x.contiguous(memory_format=memory_format(session.model_cfg))
    with autocast(session.device, session.cfg.precision):
        logits = session.model(x)
    loss = session.loss_fn(logits, y, *extras)
    (loss * weight if weight != 1.0 else loss).backward()
    return loss


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident set size (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_epoch(session: Session, epoch: int, row: dict, val: ValResult) -> None:
    """metrics.csv row, curves.png, last.pt every epoch and best.pt when val 3-D Dice improves."""
    run_dir = session.run_dir
    session.rows.append(row)
    append_metrics(run_dir / METRICS_FILE, row)
    plot_curves(read_metrics(run_dir / METRICS_FILE), run_dir / CURVES_FILE)
    no_val = not session.val_ids  # nothing to select on: best.pt follows the latest epoch
    improved = no_val or (not math.isnan(val.dice_3d) and val.dice_3d > session.best[1])
    if improved:
        session.best = (epoch, val.dice_3d)
    payload = checkpoint_payload(session.model, session.model_cfg, session.layout, epoch, training_state(session))
    if improved:
        atomic_save(payload, run_dir / CHECKPOINT_FILES["best"])
    atomic_save(payload, run_dir / CHECKPOINT_FILES["last"])


def training_state(session: Session) -> dict:
    """Optimizer, scheduler, RNG states, configs and best-so-far: what --resume needs."""
    cuda_rng = torch.cuda.get_rng_state(session.device) if session.device.type == "cuda" else None
    return {"optimizer": session.optimizer.state_dict(), "scheduler": session.scheduler.state_dict(),
            "rng": {"cpu": torch.get_rng_state(), "cuda": cuda_rng}, "train_config": asdict(session.cfg),
            "best_epoch": session.best[0], "best_val_dice_3d": session.best[1],
            **(session.semi.state() if session.semi is not None else {})}


def finish(session: Session) -> dict:
    """Write summary.json from the epochs' rows and return it."""
    rows, train_seconds = session.rows, sum(r["seconds"] for r in session.rows)
    last = rows[-1] if rows else {}
    summary = {
        "model": session.model_cfg.name, "width": session.model_cfg.width,
        "parameters": count_parameters(session.model), "epochs": len(rows), "train_seconds": train_seconds,
        "peak_memory_mb": max((r["peak_mem_mb"] for r in rows), default=0.0),
        "best_epoch": session.best[0], "best_val_dice_3d": session.best[1] if session.best[0] else math.nan,
        "samples_per_s": sum(r["samples_per_s"] for r in rows) / len(rows) if rows else math.nan,
        "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
        "final_val_dice_3d": last.get("val_dice_3d"), "final_val_dice_slice": last.get("val_dice_slice"),
        "final_val_iou_slice": last.get("val_iou_slice"), "run_dir": str(session.run_dir),
    }
    if session.dist.is_main:
        write_summary(session.run_dir, summary)
    return summary
