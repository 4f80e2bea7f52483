"""A training session and how it is built: the run folder locked, the determinism mode, the data (resident or
streamed), model, optimizer, scheduler and loss; new from a plan or resumed from last.pt."""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console

from ctmodel.batches import ResidentVolumes, load_resident
from ctmodel.checkpoint import read_checkpoint, unwrap
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.curves import read_metrics, truncate_metrics
from ctmodel.device import memory_format
from ctmodel.distributed import (SINGLE, DistEnv, check_distributed, max_across_ranks, rank_cases, rank_device,
                                 rank_plan, sum_across_ranks)
from ctmodel.losses import DiceBCELoss, GlobalDiceBCELoss, UGSLoss
from ctmodel.nets import build_model, count_parameters
from ctmodel.runfolder import (CHECKPOINT_FILES, METRICS_FILE, PLAN_FILE, PLAN_RULE, build_plan, check_new_run_dir,
                               check_plan, plan_epochs, read_config, read_plan_file, read_run_plan, resume_configs,
                               run_lock, unlabeled_policy, val_cases, with_plan_rule, write_config)
from ctmodel.semi import MeanTeacher, check_semi_model, make_teacher, unlabeled_train_cases
from ctmodel.stream import EpochStream, StoreVolumes, open_stream, stream_reason
from ctprep.errors import UsageError
from ctprep.splits import fold_view
from ctprep.store import SliceStore, StoreLayout

if TYPE_CHECKING:
    import pandas as pd

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
    check_distributed(dist, model_cfg, cfg)  # on the saved configs (inside agreed: every rank stops together)
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
    reason = stream_reason(store, cases + unlabeled, device, cfg, dist.local_world_size)
    stream = None
    if reason is None:
        data = load_resident(store, cases + unlabeled, device, cfg.resident, show_progress=dist.is_main,
                             target=cfg.target, unlabeled="empty" if unlabeled else policy, budget=cfg.budget_bytes,
                             processes=dist.local_world_size)
        where = f"data resident on {data.images.device} ({data.nbytes() / 2**20:,.0f} MiB)"
    else:
        stream, data, where = open_stream(store, rank_plan(dist, plan_epochs(slices), cfg.seed),
                                          list(val_ids) if dist.is_main else [], device, model_cfg, cfg, policy,
                                          processes=dist.local_world_size)
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
        return GlobalDiceBCELoss(sum_across_ranks, max_across_ranks, cfg.dice_weight, cfg.bce_weight)
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
