"""The mean teacher (``--semi mean-teacher``): an EMA copy of the student, the consistency loss between the student's
strongly and the teacher's weakly augmented view of unlabeled stacks, its sigmoid ramp-up, and each epoch's draw of
unlabeled slices balanced by the teacher's own predictions (docs/semi-supervised.md, "Mean teacher").

After Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017 (github.com/CuriousAI/mean-teacher)
and its segmentation form in Yu et al., UA-MT, MICCAI 2019 (github.com/yulequan/UA-MT): the warm-up EMA decay
``min(1 - 1/(step + 1), ema)``, the MSE between sigmoid probabilities, and Laine & Aila's ramp-up exp(-5 (1 - t)^2).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ctmodel.augment import AugmentConfig, random_affines, uniform
from ctmodel.checkpoint import unwrap
from ctmodel.config import ModelConfig, TrainConfig
from ctmodel.device import autocast
from ctmodel.heads import main_logits
from ctprep.errors import UsageError
from ctsample.plan import PlanConfig, classify, patient_counts, plan_epoch

if TYPE_CHECKING:
    from pathlib import Path

    from ctmodel.batches import ResidentVolumes

RAMPUP_SHAPE = 5.0  # Laine & Aila: weight = exp(-5 (1 - t)^2), t from 0 to 1 over the ramp-up
LESION_P = 0.5  # a slice is a predicted lesion slice when any pixel's teacher probability reaches this
DRAW_SEED, ORDER_SEED, VIEW_SEED = 250_000, 500_000, 750_000  # the unlabeled fill/order/view seeds next to (seed, epoch)


@dataclass(frozen=True)
class StrongConfig:
    """The student's extra intensity perturbation on top of the weak (geometry-only) view both networks share."""

    contrast: tuple[float, float] = (0.8, 1.2)  # twice augment.py's range
    brightness: float = 0.1  # twice augment.py's
    noise_std: float = 0.03  # Gaussian pixel noise (intensities in [0, 1])


def ema_alpha(global_step: int, ema: float) -> float:
    """The teacher's decay after optimizer step ``global_step`` (0-based): min(1 - 1/(step + 1), ema), so the first
    update copies the student and the teacher averages over the steps so far until ``ema`` takes over."""
    return min(1.0 - 1.0 / (global_step + 1), ema)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student for every parameter; buffers copied from the student."""
    for t, s in zip(teacher.parameters(), unwrap(student).parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), unwrap(student).buffers()):
        t.copy_(s)


def rampup_weight(progress_epochs: float, rampup_epochs: int) -> float:
    """exp(-5 (1 - t)^2) with t = clip(progress / rampup, 0, 1): exp(-5) at the start, 1 from ``rampup_epochs`` on
    (1 throughout when ``rampup_epochs`` is 0)."""
    if rampup_epochs == 0:
        return 1.0
    t = min(max(progress_epochs / rampup_epochs, 0.0), 1.0)
    return math.exp(-RAMPUP_SHAPE * (1.0 - t) ** 2)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the sigmoid probabilities; the teacher's side carries no gradient."""
    return F.mse_loss(torch.sigmoid(student_logits.float()), torch.sigmoid(teacher_logits.float()).detach())


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student (unwrapped from torch.compile) in eval mode whose parameters need no gradient."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.requires_grad_(False)
    return teacher.eval()


def check_semi_model(model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """Refuse --semi mean-teacher with unet3d (one line): the unlabeled draw is of 2.5D slice stacks."""
    if cfg.semi != "none" and model_cfg.volumetric:
        raise UsageError(f"--semi {cfg.semi} --model unet3d: expected a 2.5D model (dual-encoder or unet2d), the "
                         "mean teacher draws slice stacks, not 3-D patches; use another --model or drop --semi")


def unlabeled_train_cases(index: pd.DataFrame, store_path: Path, fold: int | None = None) -> list[str]:
    """Sorted ids of the unlabeled cases in ``index``'s train split (a fold view's train side under --fold);
    UsageError naming the store when there are none."""
    rows = index[(index["split"] == "train") & ~index["labeled"].astype(bool)]
    if rows.empty:
        where = "the train split" if fold is None else f"fold {fold}'s train side"
        raise UsageError(f"{store_path}: --semi mean-teacher: expected unlabeled cases (no mask) in {where}, found "
                         "none; add scans without masks to the store (`ctprep convert`) or drop --semi")
    return sorted(set(rows["case_id"].astype(str)))


def balanced_slices(flags: list[np.ndarray], cfg: PlanConfig, epoch: int) -> list[np.ndarray]:
    """Per case, the slice numbers of one epoch's unlabeled draw: ctsample.plan's per-patient rule (``classify``,
    ``patient_counts``, ``plan_epoch``) with ``cfg``'s ratio, neighbours and lesion-free share on the predicted
    lesion ``flags``, its fill drawn from the stream (seed, epoch, DRAW_SEED). ``cfg.ratio`` None (natural), or no
    predicted lesion slice in any case: every slice (the uniform draw)."""
    if cfg.ratio is None or not any(f.any() for f in flags):
        return [np.arange(len(f)) for f in flags]
    slices = classify(flag_rows(flags), cfg.neighbours)
    planned = plan_epoch(slices, patient_counts(slices, cfg), cfg, epoch, stream=(DRAW_SEED,))
    per_case = np.bincount(planned["case_id"].astype(int), minlength=len(flags))  # rows come sorted by case, slice
    return np.split(planned["slice"].to_numpy(np.int64), np.cumsum(per_case)[:-1])


def flag_rows(flags: list[np.ndarray]) -> pd.DataFrame:
    """The index-like rows ctsample's rule reads (case_id, slice, split, has_lesion), one per unlabeled slice; case
    ids are the zero-padded case numbers, so their sorted order is the order of ``flags``."""
    width = len(str(len(flags)))
    return pd.DataFrame({"case_id": np.repeat([f"{i:0{width}d}" for i in range(len(flags))], [len(f) for f in flags]),
                         "slice": np.concatenate([np.arange(len(f)) for f in flags]), "split": "train",
                         "has_lesion": np.concatenate(flags).astype(bool)})


def weak_and_strong(x: torch.Tensor, generator: torch.Generator, geometry: bool,
                    strong: StrongConfig = StrongConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's (weak) and the student's (strong) view of stacks (B, C, S, S): the same random flip, rotation
    and scale (none when ``geometry`` is False), so their pixels correspond; the strong view adds contrast,
    brightness and Gaussian noise, clipped to [0, 1]."""
    n = x.shape[0]
    if geometry:
        grid = F.affine_grid(random_affines(n, AugmentConfig(), generator, x.device), list(x.shape),
                             align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = uniform(n, *strong.contrast, generator, x.device)[:, None, None, None]
    brightness = uniform(n, -strong.brightness, strong.brightness, generator, x.device)[:, None, None, None]
    noise = torch.randn(x.shape, generator=generator, device=x.device) * strong.noise_std
    return x, (x * contrast + brightness + noise).clamp_(0.0, 1.0)


@dataclass
class EpochDraw:
    """One epoch's unlabeled samples in draw order (cycling over the balanced set) and the running loss."""

    case_pos: torch.Tensor  # (n,) int64 on the device: position in the resident data
    slice_index: torch.Tensor  # (n,) int64
    lesion_slices: int  # slices the teacher predicted as lesion slices at the start of the epoch
    views: torch.Generator  # the weak/strong augmentation draws
    taken: int = 0
    loss_sum: torch.Tensor | None = None  # sum of per-sample consistency on the device (no sync per step)

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` (case position, slice) pairs."""
        pick = slice(self.taken, self.taken + n)
        self.taken += n
        return self.case_pos[pick], self.slice_index[pick]


@dataclass
class MeanTeacher:
    """The teacher network, the unlabeled cases' positions in the resident data and the optimizer steps so far."""

    teacher: nn.Module
    unlabeled_pos: list[int]  # positions of the unlabeled cases in the session's ResidentVolumes
    cfg: TrainConfig
    global_step: int = 0
    draw: EpochDraw | None = field(default=None, repr=False)

    def begin_epoch(self, data: ResidentVolumes, epoch: int, n_samples: int, batch_size: int,
                    precision: str) -> None:
        """Predict every unlabeled slice with the teacher, draw the epoch's balanced set and order ``n_samples``
        of it (seeded from (seed, epoch): the epoch replays after a resume)."""
        flags = predicted_lesion_flags(self.teacher, data, self.unlabeled_pos, batch_size, precision)
        rule = PlanConfig(ratio=self.cfg.ratio, neighbours=self.cfg.neighbours, seed=self.cfg.seed,
                          lesion_free=self.cfg.lesion_free)
        picked = balanced_slices(flags, rule, epoch)
        rng = np.random.default_rng([self.cfg.seed, epoch, ORDER_SEED])
        pos = np.concatenate([np.full(len(p), c, np.int64) for c, p in zip(self.unlabeled_pos, picked)])
        slices = np.concatenate(picked).astype(np.int64)
        order = np.concatenate([rng.permutation(len(pos)) for _ in range(-(-n_samples // len(pos)))])[:n_samples]
        views = torch.Generator(device=data.device).manual_seed(self.cfg.seed * 1_000_003 + epoch + VIEW_SEED)
        self.draw = EpochDraw(torch.as_tensor(pos[order], device=data.device),
                              torch.as_tensor(slices[order], device=data.device),
                              int(sum(int(f.sum()) for f in flags)), views)

    def backward(self, student: nn.Module, data: ResidentVolumes, n: int, weight: float,
                 progress_epochs: float, geometry: bool, device: torch.device) -> None:
        """Consistency on the next ``n`` unlabeled stacks; backward of weight x consistency x ramp x loss."""
        draw = self.draw
        weak, strong = weak_and_strong(data.stacks(*draw.take(n)), draw.views, geometry)
        with torch.no_grad(), autocast(device, self.cfg.precision):
            target = main_logits(self.teacher(weak))
        with autocast(device, self.cfg.precision):
            loss = consistency_loss(main_logits(student(strong)), target)
        scale = weight * self.cfg.consistency * rampup_weight(progress_epochs, self.cfg.rampup)
        (loss * scale).backward()
        draw.loss_sum = loss.detach() * n + (0.0 if draw.loss_sum is None else draw.loss_sum)

    def update(self, student: nn.Module) -> None:
        """The EMA step after an optimizer step."""
        ema_update(self.teacher, student, ema_alpha(self.global_step, self.cfg.ema))
        self.global_step += 1

    def epoch_metrics(self) -> dict:
        """metrics.csv's extra columns: mean consistency loss per unlabeled sample, predicted lesion slices."""
        draw = self.draw
        total = 0.0 if draw.loss_sum is None else float(draw.loss_sum)
        return {"consistency_loss": total / max(draw.taken, 1), "unlabeled_lesion_slices": draw.lesion_slices}

    def state(self) -> dict:
        """What a checkpoint holds of the mean teacher."""
        return {"teacher": self.teacher.state_dict(), "global_step": self.global_step}

    def load_state(self, payload: dict) -> None:
        """Restore the teacher and the step count from a checkpoint payload."""
        self.teacher.load_state_dict(payload["teacher"])
        self.global_step = int(payload["global_step"])


@torch.no_grad()
def predicted_lesion_flags(teacher: nn.Module, data: ResidentVolumes, case_pos: list[int], batch_size: int,
                           precision: str) -> list[np.ndarray]:
    """Per case, whether the teacher's probability reaches LESION_P at any pixel of each slice (no-grad batches)."""
    counts = [int(data.n_slices[c]) for c in case_pos]
    pos = torch.as_tensor(np.repeat(case_pos, counts), device=data.device)
    slices = torch.cat([torch.arange(n, device=data.device) for n in counts])
    flags = []
    for start in range(0, len(pos), batch_size):
        with autocast(data.device, precision):
            logits = main_logits(teacher(data.stacks(pos[start:start + batch_size], slices[start:start + batch_size])))
        flags.append((logits.float() >= math.log(LESION_P / (1 - LESION_P))).flatten(1).any(1).cpu())
    return list(np.split(torch.cat(flags).numpy(), np.cumsum(counts)[:-1]))
