"""The resident loader: every case a run needs is read from the store once into one contiguous tensor
(stored dtype) on the GPU when it fits, else in pinned host memory; batches are gathered by index.

No per-sample Python and no file I/O during an epoch: a batch is one index computation, one gather of
(B, 3) slices and one decode, all on the device.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctmodel.config import ModelConfig
from ctmodel.inference import stack_indices
from ctprep.console import track
from ctprep.errors import PlanError, UsageError
from ctprep.store import SliceStore

DEVICE_MEMORY_SHARE = 0.5  # at most this share of free GPU memory holds data; the rest is for training
HOST_MEMORY_SHARE = 0.8  # at most this share of available host memory is pinned


@dataclass
class ResidentVolumes:
    """Whole cases back to back: ``images[starts[c] + z]`` is slice z of case c."""

    images: torch.Tensor  # (N, S, S) stored dtype (float16 or uint8)
    masks: torch.Tensor  # (N, S, S) uint8 {0, 1}
    case_ids: list[str]
    starts: torch.Tensor  # (C,) int64 first row of each case, on ``device``
    n_slices: torch.Tensor  # (C,) int64
    device: torch.device  # where batches are built (the training device)
    target: str = "consensus"  # TrainConfig.target: what centre_targets / patches return (docs/raters.md)
    raters: torch.Tensor | None = None  # (sum_c R_c * Z_c, S, S) uint8: case c's rater r at rater_starts[c] + r * Z_c
    rater_starts: torch.Tensor | None = None  # (C,) int64 first rater row of each case, on ``device``
    n_raters: torch.Tensor | None = None  # (C,) int64 R_c, on ``device``
    max_raters: int = 1  # max R_c: the width of the (B, R) rater gathers

    def nbytes(self) -> int:
        """Bytes held by the image, mask and (when loaded) rater tensors."""
        held = (self.images, self.masks) + ((self.raters,) if self.raters is not None else ())
        return sum(t.numel() * t.element_size() for t in held)

    def position(self, case_ids: pd.Series | list[str]) -> torch.Tensor:
        """Case positions (C,) of ``case_ids`` as an int64 tensor on the device."""
        lookup = {case_id: i for i, case_id in enumerate(self.case_ids)}
        return torch.as_tensor(np.asarray([lookup[c] for c in case_ids], dtype=np.int64), device=self.device)

    def stacks(self, case_pos: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 stacks z-1, z, z+1 (edge repeated), decoded to [0, 1] on the device."""
        rows = stack_indices(slice_index, self.n_slices[case_pos]) + self.starts[case_pos, None]  # (B, 3)
        return decode(self._take(self.images, rows))

    def centre_masks(self, case_pos: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) float32 masks of the centre slices."""
        rows = (self.starts[case_pos] + slice_index)[:, None]  # (B, 1)
        return self._take(self.masks, rows).float()

    def centre_targets(self, case_pos: torch.Tensor, slice_index: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, S, S) float32 training targets of the centre slices (C = 3 for ugs, else 1)."""
        if self.target == "consensus":
            return self.centre_masks(case_pos, slice_index)  # today's path, no rater tensor needed
        return self.targets(case_pos, slice_index[:, None], generator)[:, :, 0]

    def targets(self, case_pos: torch.Tensor, slice_index: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, K, S, S) float32 targets of slices (B, K) of each sample's case, built on the device from the
        rater tensor: union (any rater), intersection (every rater), soft (fraction of raters), random-rater (one
        rater per sample drawn from ``generator``), ugs (consensus, intersection, union)."""
        if self.target == "consensus":
            return self._consensus(case_pos, slice_index)
        if self.target == "random-rater":
            return self._rater_slices(case_pos, self._draw_raters(case_pos, generator)[:, None], slice_index)
        picked, valid = self._all_raters(case_pos, slice_index)  # (B, R, K, S, S) uint8, (B, R, 1, 1, 1) bool
        union = (picked & valid).amax(1, keepdim=True).float()
        if self.target == "union":
            return union
        intersection = (picked | ~valid).amin(1, keepdim=True).float()
        if self.target == "intersection":
            return intersection
        if self.target == "soft":
            count = self.n_raters[case_pos].float()[:, None, None, None, None]
            return (picked & valid).sum(1, keepdim=True, dtype=torch.float32) / count
        return torch.cat([self._consensus(case_pos, slice_index), intersection, union], dim=1)  # ugs: UGS_CHANNELS

    def _consensus(self, case_pos: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        """(B, 1, K, S, S) float32 stored masks (the consensus) of slices (B, K)."""
        return self._take(self.masks, self.starts[case_pos, None] + slice_index).float()[:, None]

    def _draw_raters(self, case_pos: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) one rater per sample, uniform over its case's raters, from ``generator`` (where it lives)."""
        if generator is None:
            raise ValueError("random-rater targets need the epoch's generator")
        uniform = torch.rand(len(case_pos), generator=generator, device=generator.device).to(self.device)
        count = self.n_raters[case_pos]
        return torch.minimum((uniform * count).long(), count - 1)

    def _all_raters(self, case_pos: torch.Tensor, slice_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rater's slices (B, max_raters, K, S, S) uint8 (rater 0 repeated past a case's R_c) and which
        of them are real raters (B, max_raters, 1, 1, 1) bool."""
        rater = torch.arange(self.max_raters, device=self.device)[None, :]  # (1, R)
        valid = rater < self.n_raters[case_pos, None]  # (B, R)
        picked = self._rater_slices(case_pos, torch.where(valid, rater, 0), slice_index)  # (B, R, K, S, S)
        return picked.to(torch.uint8), valid[:, :, None, None, None]

    def _rater_slices(self, case_pos: torch.Tensor, rater: torch.Tensor, slice_index: torch.Tensor) -> torch.Tensor:
        """Slices (B, K) of raters (B, R) -> (B, R, K, S, S); float32 for one rater (random-rater), else uint8."""
        if self.raters is None:
            raise ValueError(f"target {self.target!r} needs the rater tensor: load_resident(..., target=...)")
        rows = (self.rater_starts[case_pos, None, None] + rater[:, :, None] * self.n_slices[case_pos, None, None]
                + slice_index[:, None, :])  # (B, R, K)
        picked = self._take(self.raters, rows)
        return picked.float() if rater.shape[1] == 1 else picked

    def patches(self, case_pos: torch.Tensor, slice_index: torch.Tensor, depth: int, size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """unet3d's samples: images (B, 1, depth, size, size) float32 in [0, 1] and masks (same shape) float32.

        The depth window is centred on the plan's slice z (it starts at z - depth // 2, clamped inside the case);
        rows past a case shorter than ``depth`` are air (0) with mask 0. The in-plane window is a random crop
        (offsets uniform in 0..S - size, drawn from ``generator``), one per sample.
        """
        count = self.n_slices[case_pos]
        first = torch.minimum(torch.clamp(slice_index - depth // 2, min=0), torch.clamp(count - depth, min=0))
        offsets = torch.arange(depth, device=self.device)
        index = first[:, None] + offsets  # (B, depth) slice numbers
        inside = (index < count[:, None]).to(torch.float32)[:, :, None, None]  # (B, depth, 1, 1)
        rows = torch.minimum(index, count[:, None] - 1) + self.starts[case_pos, None]
        crop = self._crop_grid(len(case_pos), depth, size, generator)
        images = decode(self._take(self.images, rows)[crop]) * inside
        if self.target == "consensus":  # today's path
            return images[:, None], (self._take(self.masks, rows)[crop].float() * inside)[:, None]
        targets = self.targets(case_pos, rows - self.starts[case_pos, None], generator)  # (B, C, depth, S, S)
        return images[:, None], torch.stack([t[crop] for t in targets.unbind(1)], 1) * inside[:, None]

    def _crop_grid(self, n: int, depth: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Index tensors that cut a random (size x size) window out of each of n (depth, S, S) samples."""
        side = self.images.shape[-1]
        top, left = (torch.randint(0, side - size + 1, (2, n), generator=generator)).to(self.device)
        span = torch.arange(size, device=self.device)
        return (torch.arange(n, device=self.device)[:, None, None, None],
                torch.arange(depth, device=self.device)[None, :, None, None],
                (top[:, None] + span)[:, None, :, None], (left[:, None] + span)[:, None, None, :])

    def volume(self, case_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One whole case decoded: image (Z, S, S) float32 and mask (Z, S, S) uint8, on the device."""
        c = self.case_ids.index(case_id)
        start, count = int(self.starts[c]), int(self.n_slices[c])
        rows = slice(start, start + count)
        return (decode(self.images[rows].to(self.device, non_blocking=True)),
                self.masks[rows].to(self.device, non_blocking=True))

    def _take(self, source: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Gather rows (B, K) of ``source`` -> (B, K, S, S) on the device, wherever ``source`` lives."""
        flat = rows.reshape(-1).to(source.device)
        picked = source.index_select(0, flat).to(self.device, non_blocking=True)
        return picked.view(*rows.shape, *source.shape[1:])


def decode(stored: torch.Tensor) -> torch.Tensor:
    """Stored intensities -> float32 in [0, 1] (uint8 / 255, float16 as is)."""
    if stored.dtype == torch.uint8:
        return stored.float().mul_(1.0 / 255.0)
    return stored.float()


def resident_bytes(store: SliceStore, n_rows: int, rater_rows: int = 0) -> int:
    """Bytes needed to hold ``n_rows`` slices of image (stored dtype) and mask (uint8), plus ``rater_rows`` rater
    slices (uint8; 0 for the consensus target, which never loads the raters)."""
    size = store.layout.size
    return n_rows * size * size * (np.dtype(store.layout.dtype).itemsize + 1) + rater_rows * size * size


def choose_residency(need: int, device: torch.device, resident: str = "auto", budget: int | None = None,
                     processes: int = 1) -> torch.device | None:
    """Where the data lives: the training device when it fits, else (pinned) host memory, else None: stream it per
    plan epoch (ctmodel/stream.py). ``resident`` "stream" always streams; "device"/"host" that do not fit raise a
    one-line UsageError. ``budget`` (--memory-budget, bytes) caps both places; None: the shares of free memory,
    host memory (and on the CPU the device, which is the host) split over the ``processes`` on this node."""
    if resident == "stream":
        return None
    cap = math.inf if budget is None else budget
    if device.type == "cuda" and resident in ("auto", "device"):
        free, _total = torch.cuda.mem_get_info(device)
        if need <= min(DEVICE_MEMORY_SHARE * free, cap):  # a GPU per process: not shared
            return device
        if resident == "device":
            raise UsageError(f"--resident device: data needs {need / 2**30:.2f} GiB, the GPU has "
                             f"{free / 2**30:.2f} GiB free (at most {DEVICE_MEMORY_SHARE:.0%} is used for data)"
                             f"{budget_text(budget)}; use --resident auto or stream, or a smaller store (--dtype "
                             "uint8, smaller --size)")
    host_free = available_host_bytes()
    if need <= min(HOST_MEMORY_SHARE * host_free / processes, cap):
        return torch.device("cpu")
    if resident == "auto":
        return None
    raise UsageError(f"--resident {resident}: data needs {need / 2**30:.2f} GiB resident; GPU free memory "
                     f"{gpu_free_text(device)} and host available {host_free / 2**30:.2f} GiB"
                     f"{'' if processes == 1 else f' (shared by {processes} processes)'}{budget_text(budget)} "
                     "are too small; use --resident stream (or auto), train on fewer cases or convert with "
                     "--dtype uint8 / a smaller --size")


def budget_text(budget: int | None) -> str:
    """', --memory-budget 1.5 GiB' when a budget is set, else ''."""
    return "" if budget is None else f", --memory-budget {size_text(budget)}"


def size_text(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: '1.5 GiB', '300 KiB', '12 B'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def available_host_bytes() -> int:
    """Available physical memory (Linux /proc/meminfo MemAvailable; total pages elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_free_text(device: torch.device) -> str:
    """'N.NN GiB' free on a CUDA device, or 'n/a' on CPU."""
    if device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.mem_get_info(device)[0] / 2**30:.2f} GiB"


UNLABELED = ("refuse", "empty", "pseudo")  # load_resident: an unlabeled case raises PlanError, loads with an
# all-zero mask (mean teacher), or loads its pseudo-label as its mask (pseudo rows)


def load_resident(store: SliceStore, case_ids: list[str], device: torch.device,
                  resident: str = "auto", show_progress: bool = True, target: str = "consensus",
                  unlabeled: str = "refuse", budget: int | None = None, processes: int = 1) -> ResidentVolumes:
    """Read every slice of ``case_ids`` from the store once into one contiguous tensor per array; any ``target``
    but consensus also loads every rater's slices into one flat tensor (cases back to back, raters within).

    ``unlabeled``: "refuse" raises PlanError on a case without a mask; "empty" loads its image with an all-zero
    mask (and no rater rows), for the mean teacher, which never uses those rows as targets; "pseudo" loads its
    pseudo-label as its mask (consensus target only: a pseudo-label has no raters; PlanError when it has none).
    Their slices count in the residency decision like any other case's. ``budget``: --memory-budget in bytes;
    ``processes``: those on this node, which split the default host share (choose_residency)."""
    if unlabeled not in UNLABELED:
        raise ValueError(f"unlabeled={unlabeled!r}: expected one of {UNLABELED}")
    if unlabeled == "pseudo" and target != "consensus":
        raise UsageError(f"--target {target}: a pseudo-labelled case has one mask and no raters (expected --target "
                         "consensus with pseudo rows); train with --target consensus or plan without --pseudo")
    n_slices, n_raters = case_counts(store, case_ids, target)
    starts = np.concatenate([[0], np.cumsum(n_slices)[:-1]]).astype(np.int64)
    rater_rows = 0 if n_raters is None else int((n_raters * n_slices).sum())
    need = resident_bytes(store, int(n_slices.sum()), rater_rows)
    home = choose_residency(need, device, "auto" if resident == "stream" else resident, budget, processes)
    if home is None:
        raise UsageError(f"{store.path}: data needs {need / 2**30:.2f} GiB resident, more than fits"
                         f"{budget_text(budget)}; train with --resident stream (or auto)")
    images, masks = _allocate(store, int(n_slices.sum()), home)
    cases = track(case_ids, "loading cases", unit="case") if show_progress else case_ids
    for case_id, start, count in zip(cases, starts, n_slices):
        _copy_case(store, case_id, images[start:start + count], masks[start:start + count], unlabeled)
    data = ResidentVolumes(images=images, masks=masks, case_ids=list(case_ids),
                           starts=torch.as_tensor(starts, device=device),
                           n_slices=torch.as_tensor(n_slices, device=device), device=device, target=target)
    return data if n_raters is None else _with_raters(data, store, n_raters, n_slices, home)


def case_counts(store: SliceStore, case_ids: list[str], target: str = "consensus") -> tuple[np.ndarray,
                                                                                           np.ndarray | None]:
    """Slices per case (C,) int64 and, for any target but consensus, raters per case (else None); PlanError
    naming the cases the store's index lacks."""
    per_case = store.index().groupby("case_id")[["n_slices", "n_raters"]].first()
    counts = per_case["n_slices"].reindex(case_ids)
    if counts.isna().any():
        missing = [c for c, n in counts.items() if pd.isna(n)]
        raise PlanError(f"{store.path}: cases {missing[:5]} are not in the store's index; "
                        "use a plan made from this store")
    n_raters = per_case["n_raters"].reindex(case_ids).to_numpy(dtype=np.int64) if target != "consensus" else None
    return counts.to_numpy(dtype=np.int64), n_raters


def _with_raters(data: ResidentVolumes, store: SliceStore, n_raters: np.ndarray, n_slices: np.ndarray,
                 home: torch.device) -> ResidentVolumes:
    """``data`` with every case's raters copied into one flat (sum R_c * Z_c, S, S) uint8 tensor on ``home``."""
    sizes = n_raters * n_slices
    rater_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    side = store.layout.size
    pin = home.type == "cpu" and torch.cuda.is_available()
    raters = torch.empty((int(sizes.sum()), side, side), dtype=torch.uint8, device=home, pin_memory=pin)
    for case_id, start, size in zip(data.case_ids, rater_starts, sizes):
        if size == 0:  # an unlabeled case loaded with unlabeled="empty": no raters
            continue
        stored = store.read_raters(case_id)  # (R, Z, S, S); None only for unlabeled cases (size 0 above)
        raters[start:start + size].copy_(torch.from_numpy(np.ascontiguousarray(stored).reshape(-1, side, side)))
    data.raters, data.max_raters = raters, int(n_raters.max())
    data.rater_starts = torch.as_tensor(rater_starts, device=data.device)
    data.n_raters = torch.as_tensor(n_raters, device=data.device)
    return data


def _allocate(store: SliceStore, n_rows: int, home: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty image/mask tensors on ``home`` (pinned when on the host and a GPU exists)."""
    size = store.layout.size
    dtype = torch.float16 if store.layout.dtype == "float16" else torch.uint8
    pin = home.type == "cpu" and torch.cuda.is_available()
    return (torch.empty((n_rows, size, size), dtype=dtype, device=home, pin_memory=pin),
            torch.empty((n_rows, size, size), dtype=torch.uint8, device=home, pin_memory=pin))


def _copy_case(store: SliceStore, case_id: str, images: torch.Tensor, masks: torch.Tensor,
               unlabeled: str = "refuse") -> None:
    """Copy one case (stored dtype) into its rows; an unlabeled case is refused, gets an all-zero mask
    (``unlabeled`` "empty") or brings its pseudo-label ("pseudo")."""
    mask = case_mask(store, case_id, unlabeled)
    images.copy_(torch.from_numpy(store.read_image_raw(case_id)))
    if mask is None:
        masks.zero_()
    else:
        masks.copy_(torch.from_numpy(mask))


def case_mask(store: SliceStore, case_id: str, unlabeled: str = "refuse",
              slices: slice | np.ndarray | None = None) -> np.ndarray | None:
    """The mask slices a loader holds for ``case_id``: its mask, or for an unlabeled case a PlanError
    (``unlabeled`` "refuse"), None for an all-zero mask ("empty") or its pseudo-label ("pseudo")."""
    mask = store.read_mask(case_id, slices)
    if mask is None and unlabeled == "pseudo":
        mask = store.read_pseudo(case_id, slices)
        if mask is None:
            raise PlanError(f"{store.path}: case {case_id!r} is unlabeled and has no pseudo-label (expected one "
                            f"for a pseudo row); run `ctmodel pseudo-label RUN {store.path}`, then re-plan")
    if mask is None and unlabeled != "empty":
        raise PlanError(f"{store.path}: case {case_id!r} is unlabeled (no mask); plans and validation "
                        "use labeled cases only")
    return mask


@dataclass
class EpochSamples:
    """The plan's samples of one epoch as device tensors: case position and centre slice."""

    case_pos: torch.Tensor  # (n,) int64
    slice_index: torch.Tensor  # (n,) int64
    weight: torch.Tensor | None = None  # (n,) float32 per-sample loss weights; None: every sample weighs 1
    real: torch.Tensor | None = None  # (n,) bool, False for a rank's padding copies (distributed); None: all real

    def __len__(self) -> int:
        return int(self.case_pos.shape[0])

    def extras(self, pick: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """What a batch of samples ``pick`` carries for the loss beyond (x, y): nothing, its weights (B,), or with
        padding its weights (None: all 1) and real mask (B,)."""
        weight = None if self.weight is None else self.weight[pick]
        if self.real is not None:
            return weight, self.real[pick]
        return () if weight is None else (weight,)

    def n_real(self) -> int:
        """Samples that are plan rows (padding excluded)."""
        return len(self) if self.real is None else int(self.real.sum())


def epoch_samples(data: ResidentVolumes, rows: pd.DataFrame, pseudo_weight: float = 1.0) -> EpochSamples:
    """Plan rows (case_id, slice) of one epoch -> device index tensors; with ``pseudo_weight`` != 1 and rows of
    role ``pseudo``, per-sample loss weights (``pseudo_weight`` for those rows, 1 for the others)."""
    slice_index = torch.as_tensor(rows["slice"].to_numpy(dtype=np.int64, copy=True), device=data.device)
    samples = EpochSamples(case_pos=data.position(rows["case_id"].astype(str)), slice_index=slice_index)
    if pseudo_weight != 1.0 and "role" in rows and (rows["role"] == "pseudo").any():
        weight = np.where(rows["role"].to_numpy() == "pseudo", pseudo_weight, 1.0).astype(np.float32)
        samples.weight = torch.as_tensor(weight, device=data.device)
    return samples


def iterate_batches(data: ResidentVolumes, samples: EpochSamples, batch_size: int,
                    generator: torch.Generator, start_batch: int = 0,
                    patch: tuple[int, int] | None = None) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """Shuffled (x (B, 3, S, S), y (B, C, S, S)) batches of one epoch, or with ``patch`` = (depth, size) unet3d's
    (x (B, 1, depth, size, size), y (B, C, depth, size, size)) patches; C = 3 for ugs, else 1. The order, crops
    and random-rater draws depend only on ``generator``. Samples with weights yield (x, y, w (B,)), padded ones
    (x, y, w or None, real (B,)) (``EpochSamples.extras``): each follows its sample through the shuffle."""
    order = torch.randperm(len(samples), generator=generator).to(data.device)
    for start in range(start_batch * batch_size, len(samples), batch_size):
        pick = order[start:start + batch_size]
        case_pos, slice_index = samples.case_pos[pick], samples.slice_index[pick]
        if patch is not None:
            batch = data.patches(case_pos, slice_index, *patch, generator)
        else:
            batch = data.stacks(case_pos, slice_index), data.centre_targets(case_pos, slice_index, generator)
        yield (*batch, *samples.extras(pick))


def patches_per_step(batch_size: int, depth: int) -> int:
    """unet3d's patches per step: ``--batch-size`` counts slices, so a step holds about as many slices as a 2.5D
    model's step (at least one patch)."""
    return max(1, batch_size // depth)


def volumetric_subset(samples: EpochSamples, batch_size: int, depth: int, generator: torch.Generator) -> EpochSamples:
    """The plan rows one unet3d epoch centres its patches on: a uniform random subset (so the plan's balance
    holds in expectation) sized to give the 2.5D models' number of steps, ``n_batches(rows, batch_size)``."""
    keep = min(len(samples), n_batches(len(samples), batch_size) * patches_per_step(batch_size, depth))
    pick = torch.randperm(len(samples), generator=generator)[:keep].sort().values.to(samples.case_pos.device)
    return EpochSamples(case_pos=samples.case_pos[pick], slice_index=samples.slice_index[pick],
                        weight=None if samples.weight is None else samples.weight[pick],
                        real=None if samples.real is None else samples.real[pick])


def patch_shape(model_cfg: ModelConfig, size: int) -> tuple[int, int] | None:
    """(depth, in-plane side) of unet3d's training patches in a store of side ``size``; None for the 2.5D models."""
    return (model_cfg.patch_depth, min(model_cfg.patch_size, size)) if model_cfg.volumetric else None


def n_batches(n_samples: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be smaller)."""
    return -(-n_samples // batch_size)
