"""The stream loader (``--resident stream``): per plan epoch, only the rows the epoch needs (its slices and their ±1
context, or unet3d's depth windows) read from the store into one compact tensor, one epoch ahead on a background
thread, so epoch k + 1 loads while epoch k trains; batches are gathered on the device exactly as resident ones.

Example: stream, val = open_stream(store, plan_epochs(slices), val_ids, device, ModelConfig(), TrainConfig())
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ctmodel.batches import (HOST_MEMORY_SHARE, ResidentVolumes, available_host_bytes, budget_text, case_counts,
                             case_mask, choose_residency, decode, load_resident, resident_bytes,
                             size_text)
from ctmodel.config import ModelConfig, TrainConfig
from ctprep.errors import UsageError
from ctprep.store import SliceStore

HELD_EPOCHS = 2  # the epoch that trains and the one that loads behind it: what --memory-budget must cover
THREAD_NAME = "ctmodel-stream"
SCORING_BYTES = 4 + 1  # per pixel of the val volume being scored: its decoded float32 image and bool prediction
SPARSE_SHARE = 0.25  # read only the kept chunks when they are under this share of their range (else the range)

CaseRows = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # image (K, S, S), mask (K, S, S), raters (R, K..)
CaseReader = Callable[[SliceStore, str, np.ndarray, str, bool], CaseRows]


class StreamCancelled(Exception):
    """Raised inside the loader thread when the stream closes mid-load (never reaches the user)."""


def needed_slices(slices: np.ndarray, n_slices: int, patch_depth: int | None = None) -> np.ndarray:
    """Sorted slice numbers a case's planned slices touch: z-1, z, z+1 clamped inside the case (the 2.5D stack,
    edges repeated), or for unet3d the depth window ``ResidentVolumes.patches`` cuts around each z."""
    slices = np.asarray(slices, dtype=np.int64)
    if patch_depth is None:
        near = slices[:, None] + np.arange(-1, 2)
    else:
        first = np.minimum(np.maximum(slices - patch_depth // 2, 0), max(n_slices - patch_depth, 0))
        near = first[:, None] + np.arange(patch_depth)
    return np.unique(np.clip(near, 0, n_slices - 1))


@dataclass(frozen=True)
class EpochRows:
    """What one plan epoch holds: its cases (sorted), their full slice (and rater) counts and the slices kept."""

    case_ids: list[str]
    n_slices: np.ndarray  # (C,) int64 slices of each whole case
    n_raters: np.ndarray | None  # (C,) int64 raters per case; None for the consensus target
    kept: list[np.ndarray]  # per case, the sorted slice numbers held

    @property
    def rows(self) -> int:
        """Image (and mask) rows held."""
        return sum(len(k) for k in self.kept)

    @property
    def rater_rows(self) -> int:
        """Rater rows held (0 for the consensus target)."""
        return 0 if self.n_raters is None else int(sum(len(k) * r for k, r in zip(self.kept, self.n_raters)))

    def nbytes(self, store: SliceStore) -> int:
        """Bytes the epoch's compact tensors take."""
        return resident_bytes(store, self.rows, self.rater_rows)


def epoch_rows(store: SliceStore, rows: pd.DataFrame, target: str = "consensus",
               patch_depth: int | None = None) -> EpochRows:
    """The rows one plan epoch needs (``rows``: its case_id, slice columns), case by case in case order."""
    case_ids, which = np.unique(rows["case_id"].astype(str).to_numpy(), return_inverse=True)  # sorted ids
    order = np.argsort(which, kind="stable")
    per_case = np.split(rows["slice"].to_numpy(dtype=np.int64)[order], np.cumsum(np.bincount(which))[:-1])
    case_ids = [str(c) for c in case_ids]
    n_slices, n_raters = case_counts(store, case_ids, target)
    kept = [needed_slices(z, int(n), patch_depth) for z, n in zip(per_case, n_slices)]
    return EpochRows(case_ids, n_slices, n_raters, kept)


@dataclass
class StreamVolumes(ResidentVolumes):
    """One epoch's compact rows behind the resident interface: ``starts``/``n_slices`` (and the rater ones) describe
    the whole cases, as if resident, and ``row_table`` maps those virtual rows to the compact ones held (-1: not
    held), so ``stack_indices``' edge repeat and every gather give what the resident loader gives."""

    row_table: torch.Tensor | None = None  # (sum Z_c,) int64 on the device
    rater_table: torch.Tensor | None = None  # (sum R_c * Z_c,) int64 on the device; None for consensus

    def _take(self, source: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Gather virtual rows (B, K): map them to compact rows, then gather as the resident loader does."""
        table = self.rater_table if source is self.raters else self.row_table
        return super()._take(source, table[rows])

    def volume(self, case_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Not held: a streamed epoch has planned rows only (validation reads whole volumes elsewhere)."""
        raise ValueError(f"case {case_id!r}: a streamed epoch holds planned rows only, not whole volumes")


def virtual_table(counts: np.ndarray, kept: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(sum counts,) int64: the compact row of each virtual row (case blocks of ``counts`` rows back to back, in
    which block c keeps rows ``kept[c]``, compact rows numbered in order); -1 where nothing is held."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    table = np.full(int(counts.sum()), -1, dtype=np.int64)
    virtual = np.concatenate([s + k for s, k in zip(starts, kept)]) if kept else np.zeros(0, np.int64)
    table[virtual] = np.arange(len(virtual))
    return torch.as_tensor(table, device=device)


def read_case_rows(store: SliceStore, case_id: str, kept: np.ndarray, unlabeled: str,
                   raters: bool) -> CaseRows:
    """One case's kept slices, one read per array from the case's shard: the contiguous range kept[0]..kept[-1]
    (then the kept rows taken), or when the kept rows are under SPARSE_SHARE of that range only those chunks
    (docs/scaling.md, "Reads (measured)"); mask None for an all-zero mask (``unlabeled`` "empty")."""
    sparse = len(kept) < SPARSE_SHARE * (int(kept[-1]) - int(kept[0]) + 1)
    where = kept if sparse else slice(int(kept[0]), int(kept[-1]) + 1)
    pick = slice(None) if sparse else kept - kept[0]
    mask = case_mask(store, case_id, unlabeled, where)
    rater_rows = store.read_raters(case_id, where) if raters and mask is not None else None
    return (store.read_image_raw(case_id, where)[pick], None if mask is None else mask[pick],
            None if rater_rows is None else rater_rows[:, pick])


def load_epoch(store: SliceStore, layout: EpochRows, home: torch.device, device: torch.device,
               target: str = "consensus", unlabeled: str = "refuse", read: CaseReader = read_case_rows,
               stop: threading.Event | None = None) -> StreamVolumes:
    """Read one epoch's rows, case by case in case order, into compact tensors on ``home`` (pinned when on the
    host and a GPU exists); ``stop`` set between cases abandons the load (StreamCancelled)."""
    side, pin = store.layout.size, home.type == "cpu" and torch.cuda.is_available()
    dtype = torch.float16 if store.layout.dtype == "float16" else torch.uint8
    images = torch.empty((layout.rows, side, side), dtype=dtype, device=home, pin_memory=pin)
    masks = torch.empty((layout.rows, side, side), dtype=torch.uint8, device=home, pin_memory=pin)
    raters = (torch.empty((layout.rater_rows, side, side), dtype=torch.uint8, device=home, pin_memory=pin)
              if layout.n_raters is not None else None)
    row, rater_row = 0, 0
    with side_stream(home):
        for count, (case_id, kept) in enumerate(zip(layout.case_ids, layout.kept)):
            if stop is not None and stop.is_set():
                raise StreamCancelled(case_id)
            image, mask, case_raters = read(store, case_id, kept, unlabeled, raters is not None)
            rows = slice(row, row + len(kept))
            images[rows].copy_(torch.from_numpy(np.ascontiguousarray(image)))
            if mask is None:
                masks[rows].zero_()
            else:
                masks[rows].copy_(torch.from_numpy(mask))
            if raters is not None:
                size = int(layout.n_raters[count]) * len(kept)
                if case_raters is not None and size:
                    raters[rater_row:rater_row + size].copy_(
                        torch.from_numpy(np.ascontiguousarray(case_raters).reshape(-1, side, side)))
                rater_row += size
            row += len(kept)
    return compact_volumes(layout, images, masks, raters, device, target)


class side_stream:
    """On a CUDA ``home``: run the loader's copies on their own CUDA stream (so they overlap training kernels) and
    wait for them on exit; elsewhere nothing."""

    def __init__(self, home: torch.device) -> None:
        self.stream = torch.cuda.Stream(home) if home.type == "cuda" else None
        self.context = torch.cuda.stream(self.stream) if self.stream is not None else None

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
            self.stream.synchronize()


def compact_volumes(layout: EpochRows, images: torch.Tensor, masks: torch.Tensor, raters: torch.Tensor | None,
                    device: torch.device, target: str) -> StreamVolumes:
    """The loaded tensors with the virtual whole-case layout and the row tables on the training device."""
    starts = np.concatenate([[0], np.cumsum(layout.n_slices)[:-1]]).astype(np.int64)
    data = StreamVolumes(images=images, masks=masks, case_ids=list(layout.case_ids),
                         starts=torch.as_tensor(starts, device=device),
                         n_slices=torch.as_tensor(layout.n_slices, device=device), device=device, target=target,
                         row_table=virtual_table(layout.n_slices, layout.kept, device))
    if raters is None:
        return data
    sizes = layout.n_raters * layout.n_slices  # virtual: R_c whole cases per case, rater-major
    kept = [np.concatenate([r * z + k for r in range(int(n))]) if n else np.zeros(0, np.int64)
            for k, z, n in zip(layout.kept, layout.n_slices, layout.n_raters)]
    data.raters, data.max_raters = raters, int(layout.n_raters.max())
    data.rater_starts = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
                                        device=device)
    data.n_raters = torch.as_tensor(layout.n_raters, device=device)
    data.rater_table = virtual_table(sizes, kept, device)
    return data


class EpochStream:
    """Plan epochs loaded one ahead on one background thread: ``epoch(e)`` returns training epoch e's rows (waiting
    for them when they are not ready) and starts loading epoch e + 1's, so at most two epochs are held. An error
    in the thread is raised by ``epoch()`` in the caller's thread; ``close()`` stops and joins the thread."""

    def __init__(self, load: Callable[[int, threading.Event], StreamVolumes], n_plan_epochs: int,
                 last_epoch: int) -> None:
        self._load, self._n_plan, self._last = load, n_plan_epochs, last_epoch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._stop = threading.Event()
        self._next: tuple[int, Future] | None = None  # (plan epoch, its load)
        self._current: tuple[int, StreamVolumes] | None = None

    def plan_epoch(self, epoch: int) -> int:
        """The plan epoch (0-based) training epoch ``epoch`` (1-based) uses, as train_one_epoch picks it."""
        return (epoch - 1) % self._n_plan

    def epoch(self, epoch: int) -> StreamVolumes:
        """Epoch ``epoch``'s rows; starts loading the next epoch's (unless it is the same plan epoch, or the last)."""
        key = self.plan_epoch(epoch)
        if self._current is not None and self._current[0] == key:
            data = self._current[1]
        else:
            self._current = None  # drop the finished epoch before waiting: two epochs at most
            pending = self._next if self._next is not None and self._next[0] == key else None
            self._next = None
            future = pending[1] if pending is not None else self._pool.submit(self._load, key, self._stop)
            data = future.result()
            self._current = (key, data)
        following = self.plan_epoch(epoch + 1)
        if epoch < self._last and following != key and self._next is None:
            self._next = (following, self._pool.submit(self._load, following, self._stop))
        return data

    def close(self) -> None:
        """Abandon any load in flight and join the thread (its error, if any, is dropped: the run is over)."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._next = self._current = None


@dataclass
class StoreVolumes:
    """Validation volumes read from the store at each validation, one case at a time (when they do not fit the
    budget beside the streamed epochs)."""

    store: SliceStore
    device: torch.device

    def volume(self, case_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One whole case decoded: image (Z, S, S) float32 and mask (Z, S, S) uint8, on the device."""
        mask = case_mask(self.store, case_id)
        return (decode(torch.from_numpy(self.store.read_image_raw(case_id)).to(self.device)),
                torch.from_numpy(mask).to(self.device))


def default_budget(processes: int = 1) -> int:
    """The stream's budget without --memory-budget: the host share of available memory (the rows may always
    live in pinned host memory), split over the ``processes`` on this node (torchrun's LOCAL_WORLD_SIZE)."""
    return int(HOST_MEMORY_SHARE * available_host_bytes() / processes)


def resident_need(store: SliceStore, case_ids: list[str], target: str = "consensus") -> int:
    """Bytes the resident loader would hold for ``case_ids`` (images, masks, and raters for non-consensus)."""
    n_slices, n_raters = case_counts(store, case_ids, target)
    return resident_bytes(store, int(n_slices.sum()), 0 if n_raters is None else int((n_raters * n_slices).sum()))


def val_needs(store: SliceStore, val_ids: list[str]) -> tuple[int, int]:
    """Bytes validation takes beside the stream: (every val case resident + scoring the largest, the largest read
    from the store and scored). Scoring a volume adds SCORING_BYTES per pixel (its float32 image and bool
    prediction) to its stored bytes, which a volume read from the store also holds while it decodes."""
    if not val_ids:
        return 0, 0
    stored = [resident_need(store, [c]) for c in val_ids]
    n_slices, _raters = case_counts(store, val_ids)
    scoring = int(n_slices.max()) * store.layout.size ** 2 * SCORING_BYTES
    return sum(stored) + scoring, max(stored) + scoring


def stream_reason(store: SliceStore, case_ids: list[str], device: torch.device, cfg: TrainConfig,
                  processes: int = 1) -> str | None:
    """None when the run's data stays resident; else why it streams (the line `ctmodel train` prints).
    ``processes``: those on this node, which split the default host share (choose_residency)."""
    need = resident_need(store, case_ids, cfg.target)
    if choose_residency(need, device, cfg.resident, cfg.budget_bytes, processes) is not None:
        return None
    if cfg.resident == "stream":
        return "--resident stream: streaming each plan epoch's rows from the store, one epoch ahead"
    return (f"data needs {size_text(need)}, more than fits in memory{budget_text(cfg.budget_bytes)}: "
            "streaming each plan epoch's rows from the store (--resident stream)")


def open_stream(store: SliceStore, plan: list[pd.DataFrame], val_ids: list[str], device: torch.device,
                model_cfg: ModelConfig, cfg: TrainConfig, unlabeled: str = "refuse",
                read: CaseReader = read_case_rows,
                processes: int = 1) -> tuple[EpochStream, ResidentVolumes | StoreVolumes, str]:
    """The epoch stream over ``plan``, the validation volumes (resident when they fit the budget beside two
    epochs, else read per validation) and a one-line description; UsageError when two epochs (plus one val
    volume) do not fit ``cfg``'s budget (without --memory-budget: default_budget(``processes``))."""
    if cfg.semi != "none":
        raise UsageError(f"--semi {cfg.semi} with --resident stream: the mean teacher predicts every unlabeled "
                         "slice each epoch, which a stream does not hold (expected data that fits in memory); "
                         "raise --memory-budget or drop --semi")
    budget = cfg.budget_bytes or default_budget(processes)
    depth = model_cfg.patch_depth if model_cfg.volumetric else None
    layouts = [epoch_rows(store, rows, cfg.target, depth) for rows in plan]
    held = max(layout.nbytes(store) for layout in layouts) * (HELD_EPOCHS if len(plan) > 1 else 1)
    all_val, one_val = val_needs(store, val_ids)
    if held + one_val > budget:
        raise UsageError(f"{store.path}: streaming needs {size_text(held)} for {min(len(plan), HELD_EPOCHS)} plan "
                         f"epoch(s) of rows plus {size_text(one_val)} to score the largest val volume, more than "
                         f"the {size_text(budget)} budget; raise --memory-budget or plan fewer slices per epoch "
                         "(--ratio, --lesion-free)")
    if held + all_val <= budget:
        val = load_resident(store, val_ids, device, "auto", show_progress=False, budget=budget - held,
                            processes=processes)
        val_text = f"val cases resident ({size_text(resident_need(store, val_ids))})" if val_ids else "no val cases"
    else:
        val, val_text = StoreVolumes(store, device), "val cases read from the store at each validation"
    home = choose_residency(held, device, "auto", budget - (all_val if isinstance(val, ResidentVolumes) else one_val),
                            processes) or torch.device("cpu")

    def load(key: int, stop: threading.Event) -> StreamVolumes:
        return load_epoch(store, layouts[key], home, device, cfg.target, unlabeled, read, stop)

    text = (f"streaming {len(plan)} plan epoch(s), at most {size_text(held)} held on {home} "
            f"(budget {size_text(budget)}); {val_text}")
    return EpochStream(load, len(plan), cfg.epochs), val, text
