"""Training: ``train()`` runs epochs of resident-loader batches, validates on whole val volumes, and keeps
the run folder (config.json, metrics.csv, curves.png, last.pt, best.pt, summary.json) up to date.

Example: train(Path("store.zarr"), ModelConfig(), TrainConfig(epochs=50), out=Path("runs/dual"))
"""
from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console

from ctmodel.augment import augment_batch
from ctmodel.batches import (ResidentVolumes, iterate_batches, load_resident, patch_shape,
                             patches_per_step, volumetric_subset)
from ctmodel.checkpoint import atomic_save, checkpoint_payload, read_checkpoint, unwrap
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.curves import append_metrics, plot_curves, read_metrics, truncate_metrics
from ctmodel.device import autocast, inference_batch
from ctmodel.distributed import (SINGLE, DistEnv, agreed, barrier, broadcast_object, check_distributed,
                                 check_same_plan, ddp_model, local_model, per_rank_batch, process_group, rank_cases,
                                 rank_device, rank_plan, rank_samples, sum_across_ranks)
from ctmodel.losses import DiceBCELoss, GlobalDiceBCELoss, UGSLoss, consensus_loss
from ctmodel.nets import build_model, count_parameters
from ctmodel.runfolder import (CHECKPOINT_FILES, CONFIG_FILE, CURVES_FILE, METRICS_FILE, PLAN_FILE, PLAN_RULE,
                               SUMMARY_FILE, build_plan, check_new_run_dir, check_plan, default_run_dir, plan_epochs,
                               read_config, read_plan_file, read_run_plan, resume_configs, run_lock,
                               unlabeled_policy, val_cases, with_plan_rule, write_config, write_summary)
from ctmodel.semi import MeanTeacher, check_semi_model, make_teacher, unlabeled_train_cases
from ctmodel.stream import EpochStream, StoreVolumes, open_stream, stream_reason
from ctmodel.validate import ValResult, validate
from ctprep.console import make_console, progress_bar, rate_text
from ctprep.errors import RunError, UsageError
from ctprep.splits import fold_view
from ctprep.store import SliceStore, StoreLayout

if TYPE_CHECKING:
    import pandas as pd

StepHook = Callable[[int, int], None]  # (epoch, step) after every optimizer step (not micro-batch)
BAR_EVERY = 10  # optimizer steps between progress-bar refreshes (each one syncs the GPU for the loss value)
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results


@dataclass
class Session:
    """Everything one run keeps between epochs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    loss_fn: DiceBCELoss | UGSLoss
    data: ResidentVolumes | StoreVolumes  # every case resident, or with a stream the val cases only
    plan: list[pd.DataFrame]  # per plan epoch: its rows (case_id, slice, ...)
    val_ids: list[str]
    device: torch.device
    model_cfg: ModelConfig
    cfg: TrainConfig
    run_dir: Path
    layout: StoreLayout  # of the training store, saved in every checkpoint
    start_epoch: int = 1
    best: tuple[int, float] = (0, -math.inf)  # (epoch, val Dice 3-D)
    rows: list[dict] = field(default_factory=list)
    semi: MeanTeacher | None = None  # --semi mean-teacher: the teacher and its unlabeled cases
    stream: EpochStream | None = None  # --resident stream: the epochs' rows (``data`` then holds the val cases)
    dist: DistEnv = SINGLE  # torchrun: this process's rank (rank 0 validates and writes the run folder)

    @cached_property
    def all_rows(self) -> pd.DataFrame:
        """Every plan epoch's rows: what the distributed case -> rank map balances."""
        import pandas as pd

        return pd.concat(self.plan)


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


def open_session(held: ExitStack, store: SliceStore, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig,
                 plan_path: Path | None, resume: bool, explicit: frozenset[str], console: Console,
                 dist: DistEnv) -> Session:
    """Lock the run folder (rank 0), enter the determinism mode and build the new or resumed session."""
    held.enter_context(run_lock(run_dir, resume) if dist.is_main else nullcontext())
    held.enter_context(determinism(cfg.deterministic or (resume and _saved_deterministic(run_dir))))
    return (resume_session(store, run_dir, model_cfg, cfg, explicit, console, dist) if resume
            else new_session(store, run_dir, model_cfg, cfg, plan_path, explicit, console, dist))


def _saved_deterministic(run_dir: Path) -> bool:
    """Whether the run being resumed was started with --deterministic."""
    return bool(read_config(run_dir)["train"].get("deterministic"))


@contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels while training, cuDNN autotuning otherwise; torch's flags and the environment
    (CUBLAS_WORKSPACE_CONFIG, set only when absent) are as before on exit."""
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    name, workspace = CUBLAS_WORKSPACE
    set_here = enabled and name not in os.environ  # a value the user set is used and kept
    if set_here:
        os.environ[name] = workspace
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.benchmark = old[1]
        if set_here:
            os.environ.pop(name, None)


def new_session(store: SliceStore, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig,
                plan_path: Path | None, explicit: frozenset[str], console: Console,
                dist: DistEnv = SINGLE) -> Session:
    """Check the inputs, write config.json + plan.parquet (rank 0), load the data, build model and optimizer."""
    if dist.is_main:
        check_new_run_dir(run_dir)
    if plan_path is not None and explicit & set(PLAN_RULE):
        raise UsageError(f"{plan_path}: --ratio/--neighbours/--lesion-free/--lesion-by/--pseudo/--pseudo-weight/"
                         "--min-confidence build a plan, but --plan FILE already fixed them; drop them (the plan's "
                         "own rule applies)")
    if plan_path is not None and cfg.fold is not None:
        raise UsageError(f"{plan_path}: --plan FILE was made for the store's train split, not for fold "
                         f"{cfg.fold}'s; drop --plan (ctmodel train builds the fold's plan)")
    index = training_index(store, cfg)
    plan = read_plan_file(plan_path) if plan_path is not None else build_plan(index, cfg, store.path)
    source = str(plan_path) if plan_path is not None else "built by ctmodel train"
    if plan_path is not None:
        cfg = with_plan_rule(cfg, plan[1])
    check_plan(plan[0], plan[1], index, store.path, source)
    if not val_cases(index):
        console.print(f"warning: {store.path} has no labeled val patient, so nothing to select a checkpoint on: "
                      f"best.pt follows the latest epoch; add some with `ctsample split {store.path} --val 0.1`")
    session = make_session(store, run_dir, model_cfg, cfg, plan[0], val_cases(index), console, dist)
    if dist.is_main:
        write_config(run_dir, model_cfg, cfg, store, index, plan, source, count_parameters(session.model))
    return session


def training_index(store: SliceStore, cfg: TrainConfig) -> pd.DataFrame:
    """The store's index, or with ``cfg.fold`` its fold view (fold k as val, the other folds as train)."""
    index = store.index()
    return index if cfg.fold is None else fold_view(index, cfg.fold, store.path)


def resume_session(store: SliceStore, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig,
                   explicit: frozenset[str], console: Console, dist: DistEnv = SINGLE) -> Session:
    """Rebuild the session of ``run_dir`` and load last.pt (model, optimizer, scheduler, RNG, best); every rank
    loads rank 0's last.pt, whatever the number of processes that wrote it."""
    model_cfg, cfg, config = resume_configs(run_dir, model_cfg, cfg, explicit)
    index = training_index(store, cfg)
    check_plan(read_run_plan(run_dir), {**config["plan"].get("params", {}),
                                        "index_fingerprint": config["store"]["index_fingerprint"]},
               index, store.path, str(run_dir / PLAN_FILE))
    last = run_dir / CHECKPOINT_FILES["last"]
    payload = read_checkpoint(last) if last.exists() else None  # on the CPU, checked before any data loads
    session = make_session(store, run_dir, model_cfg, cfg, read_run_plan(run_dir), config["val_cases"], console, dist)
    if payload is not None:
        restore_state(session, payload)  # load_state_dict moves weights and optimizer state to the session's device
    if dist.is_main:
        truncate_metrics(run_dir / METRICS_FILE, session.start_epoch - 1)
    session.rows = read_metrics(run_dir / METRICS_FILE).to_dict("records")
    console.print(f"resuming {run_dir} at epoch {session.start_epoch}/{cfg.epochs}")
    return session


def make_session(store: SliceStore, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, slices: pd.DataFrame,
                 val_ids: list[str], console: Console, dist: DistEnv = SINGLE) -> Session:
    """Seeded model, AdamW, StepLR, loss, and every needed case resident (train plan cases + val cases, and with
    --semi the train split's unlabeled cases after them; with N ranks, the rank's own cases, val on rank 0)."""
    check_semi_model(model_cfg, cfg)
    unlabeled = [] if cfg.semi == "none" else unlabeled_train_cases(training_index(store, cfg), store.path, cfg.fold)
    device = rank_device(dist, cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=memory_format(model_cfg))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    cases = rank_cases(dist, slices, val_ids, cfg.seed)
    policy = unlabeled_policy(slices)
    if unlabeled and policy == "pseudo":
        raise UsageError("--semi mean-teacher with pseudo rows in the plan: the mean teacher uses the unlabeled "
                         "cases without their pseudo-labels; train one or the other (drop --semi or --pseudo)")
    reason = stream_reason(store, cases + unlabeled, device, cfg)
    stream = None
    if reason is None:
        data = load_resident(store, cases + unlabeled, device, cfg.resident, show_progress=dist.is_main,
                             target=cfg.target, unlabeled="empty" if unlabeled else policy, budget=cfg.budget_bytes)
        where = f"data resident on {data.images.device} ({data.nbytes() / 2**20:,.0f} MiB)"
    else:
        stream, data, where = open_stream(store, rank_plan(dist, plan_epochs(slices), cfg.seed),
                                          list(val_ids) if dist.is_main else [], device, model_cfg, cfg, policy)
        console.print(reason)  # after open_stream: a refusal stays one line
    console.print(f"{count_parameters(model):,} trainable parameters ({model_cfg.name}, width {model_cfg.width}); "
                  f"{where}" + (f"; {len(unlabeled)} unlabeled cases for the mean teacher" if unlabeled else ""))
    return Session(model=torch.compile(model) if cfg.compile and not dist.enabled else model, optimizer=optimizer,
                   scheduler=scheduler, loss_fn=training_loss(cfg, dist), data=data,
                   plan=plan_epochs(slices), val_ids=list(val_ids), device=device, model_cfg=model_cfg,
                   cfg=cfg, run_dir=run_dir, layout=store.layout, stream=stream,
                   semi=MeanTeacher(make_teacher(model), list(range(len(cases), len(data.case_ids))), cfg)
                   if unlabeled else None, dist=dist)


def training_loss(cfg: TrainConfig, dist: DistEnv = SINGLE) -> DiceBCELoss | UGSLoss:
    """The run's loss: Dice + BCE on the target, or for ``--target ugs`` UGS-Net's loss over its three heads; with
    N ranks, Dice + BCE over the global batch."""
    if dist.enabled:
        return GlobalDiceBCELoss(sum_across_ranks, cfg.dice_weight, cfg.bce_weight)
    loss = DiceBCELoss(cfg.dice_weight, cfg.bce_weight)
    return UGSLoss(loss) if cfg.target == "ugs" else loss


def restore_state(session: Session, payload: dict) -> None:
    """Load a last.pt payload into the session: weights, optimizer, scheduler, RNG, best so far."""
    unwrap(session.model).load_state_dict(payload["model"])
    session.optimizer.load_state_dict(payload["optimizer"])
    session.scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng"]["cpu"].cpu())
    if session.device.type == "cuda" and payload["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(payload["rng"]["cuda"].cpu(), session.device)
    session.best = (int(payload["best_epoch"]), float(payload["best_val_dice_3d"]))
    session.start_epoch = int(payload["epoch"]) + 1
    if session.semi is not None:
        session.semi.load_state(payload)


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
           "samples_per_s": samples * session.dist.world_size / train_seconds,
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
    """One pass over the plan epoch's samples, ``accumulate`` micro-batches per optimizer step;
    returns (mean loss per sample, samples, seconds)."""
    cfg, model = session.cfg, session.model
    waiting = time.perf_counter()  # a streamed epoch not loaded yet: the wait counts in samples/s
    data = session.data if session.stream is None else session.stream.epoch(epoch)
    waited = time.perf_counter() - waiting
    samples = rank_samples(session.dist, data, session.plan[(epoch - 1) % len(session.plan)], session.all_rows,
                           cfg.seed, cfg.pseudo_weight)
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
        for micro, ((x, y, *sample_weight), (weight, first, last)) in enumerate(zip(batches, groups)):
            if first:
                session.optimizer.zero_grad(set_to_none=True)
            loss_sum += micro_batch_backward(session, x, y, aug, weight, sample_weight, epoch - 1 + micro / len(groups))
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
    return float(loss_sum) / len(samples), len(samples), time.perf_counter() - start + waited


def micro_batch_backward(session: Session, x: torch.Tensor, y: torch.Tensor, aug: torch.Generator, weight: float,
                         sample_weight: list[torch.Tensor], progress_epochs: float) -> torch.Tensor:
    """Backward of one labeled micro-batch and, with --semi, of the consistency on an unlabeled micro-batch of the
    same size; returns the labeled loss times the micro-batch's samples (detached, no GPU sync)."""
    loss = forward_backward(session, x, y, aug, weight, *sample_weight).detach() * x.shape[0]
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
                     weight: float = 1.0, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Augment, forward under autocast, loss (per-sample weighted when ``sample_weight`` (B,) is given), backward
    of ``weight`` x loss (gradients add up in .grad); returns the unweighted loss (no GPU sync)."""
    if session.cfg.augment and x.ndim == 5:  # unet3d patches: one geometry for every slice of a sample
        x, flat = augment_batch(x[:, 0], y.flatten(1, 2), aug)  # targets (B, C * depth, S, S)
        x, y = x[:, None], flat.view(y.shape)
    elif session.cfg.augment:
        x, y = augment_batch(x, y, aug)
    if session.cfg.channels_last and session.device.type == "cuda":
        x = x.contiguous(memory_format=memory_format(session.model_cfg))
    with autocast(session.device, session.cfg.precision):
        logits = session.model(x)
    loss = session.loss_fn(logits, y) if sample_weight is None else session.loss_fn(logits, y, sample_weight)
    (loss * weight if weight != 1.0 else loss).backward()
    return loss


def memory_format(model_cfg: ModelConfig) -> torch.memory_format:
    """--channels-last's layout: channels_last for the 2.5D networks, channels_last_3d for unet3d."""
    return torch.channels_last_3d if model_cfg.volumetric else torch.channels_last


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
