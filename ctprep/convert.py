"""The convert pipeline: find cases, validate and preprocess each (in parallel), write the store and its index.

Crash safety and concurrent writers (docs/store-format.md): the store lock is held only to open (or create)
the store and clear leftovers of killed runs, and at the end to rebuild the index: cases are written without it,
each under the run's own partial area (``ctprep.partials``) and committed only when complete (``write_case``),
so several runs (``--shard`` jobs, machines) can fill one store at once. Complete cases whose source fingerprint
and layout are unchanged are skipped; the index is rebuilt from every complete case and replaced atomically at
the end (not by a ``--shard`` job: `ctprep index` follows them). A run killed at any moment and re-run gives the
same arrays and index. The cases run in this process, a fork-server pool or on a Dask cluster
(``ctprep.executors``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ctprep.console import human_bytes, progress_bar, rate_text, ratio_text
from ctprep.discover import CaseSource, find_cases
from ctprep.errors import CaseError, UsageError, storage_errors
from ctprep.executors import Scheduler, open_executor
from ctprep.index import empty_per_lesion, lost_to_resize
from ctprep.location import StoreLocation, open_location
from ctprep.lock import store_lock
from ctprep.preprocess import preprocess_image
from ctprep.raters import check_consensus, label_case
from ctprep.readers import image_notes, read_case_mask, read_image
from ctprep.shards import case_faults
from ctprep.sources import source_attrs
from ctprep.partials import STALE_AFTER_S, clear_partial, run_area
from ctprep.reindex import clear_leftovers, rebuild_index
from ctprep.shard_jobs import Shard
from ctprep.splits import SplitConfig
from ctprep.store import SliceStore, StoreLayout, create_or_open, disk_bytes, update_root_attrs, write_case
from ctprep.window import encode, parse_window

CONVERTER_VERSION = 3  # bump when the stored arrays of an unchanged source would change: forces reconversion
# 2: masks keep every lesion component (geometry.keep_every_component); source_lesion_voxels per slice
# 3: rater masks (cases/<id>/raters), the mask is their consensus
START_LOCK_WAIT_S = 2.0  # runs starting together (job arrays) hold the lock for a moment each; longer: refused


@dataclass(frozen=True)
class ConvertConfig:
    """Options of ``ctprep convert``; the first three fix the store's layout.

    ``window_hu`` may be given as 'LO,HI' text (the CLI's ``--window``); once built it is always a (lo, hi) pair.
    """

    window_hu: tuple[float, float] | str = (-1000.0, 400.0)  # lung + mediastinum, as in the source study
    size: int = 256  # stored in-plane side S: 512 CT halves, lesions stay > 10 px
    dtype: str = "float16"  # float16 in [0, 1]; uint8 halves the store
    workers: int | None = None  # processes; None = all cores, 1 = in-process
    split: SplitConfig | None = None  # None keeps the store's recorded split config (default for a new store)
    consensus: str | None = None  # majority|union|intersection; None: the store's rule (majority for a new store)
    scheduler: Scheduler | str | None = None  # Dask: 'local:N' or 'tcp://HOST:8786'; None: ``workers`` processes
    shard: Shard | str | None = None  # 'i/N': convert only share i of N and leave the index to `ctprep index`
    stale_after_s: float = STALE_AFTER_S  # another run's partial area this old is abandoned (cleared)
    allow_tilt: bool = False  # DICOM series with gantry tilt: resample onto an orthogonal grid instead of refusing

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_hu", parse_window_hu(self.window_hu))
        if isinstance(self.scheduler, str):
            object.__setattr__(self, "scheduler", Scheduler.parse(self.scheduler))
        if isinstance(self.shard, str):
            object.__setattr__(self, "shard", Shard.parse(self.shard))
        if self.stale_after_s <= 0:
            raise UsageError(f"--stale-after {self.stale_after_s / 3600:g}: expected a positive number of hours")
        if self.consensus is not None:
            check_consensus(self.consensus)
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: expected 1 or more processes")
        self.layout  # validates size and dtype

    @property
    def layout(self) -> StoreLayout:
        """The store layout these options produce."""
        try:
            return StoreLayout(window_hu=self.window_hu, size=self.size, dtype=self.dtype)
        except Exception as err:
            raise UsageError(str(err)) from err


def parse_window_hu(window: tuple[float, float] | str) -> tuple[float, float]:
    """A (lo, hi) HU pair from a tuple or 'LO,HI' text; UsageError when lo >= hi."""
    text = window if isinstance(window, str) else ",".join(str(float(v)) for v in window)
    try:
        return parse_window(text)
    except ValueError as err:
        raise UsageError(str(err)) from err


@dataclass
class CaseResult:
    """What converting one case produced (or why it failed)."""

    case_id: str
    n_slices: int = 0
    lesion_slices: int = 0
    source_bytes: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # warnings: DICOM localizers dropped, other series ignored


@dataclass
class ConvertReport:
    """Outcome of one convert run; totals describe the whole store after the run."""

    store_path: Path
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each: file, fault, what to do
    orphans: list[Path] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # one line each: NIfTI-named entries not read, and why
    notes: list[str] = field(default_factory=list)  # one line each: DICOM images dropped or series ignored (warnings)
    cases: int = 0
    slices: int = 0
    labeled_slices: int = 0
    lesion_slices: int = 0
    lost_slices: int = 0  # labeled slices with source lesion voxels whose stored mask is empty
    lost_voxels: int = 0  # the source lesion voxels of those slices
    store_bytes: int = 0
    source_bytes: int = 0  # bytes of source files read this run
    seconds: float = 0.0
    workers: int = 1
    shard: Shard | None = None  # set for a --shard job: the index was not written, store totals not counted

    @property
    def empty_per_lesion(self) -> float:
        """Empty:lesion slice ratio over labeled slices (NaN without lesion slices)."""
        return empty_per_lesion(self.labeled_slices, self.lesion_slices)

    def summary_rows(self) -> list[tuple[str, object]]:
        """(what, value) rows for the closing summary table (a --shard job's without the store's totals)."""
        run = [("converted", len(self.converted)), ("skipped (unchanged)", len(self.skipped)),
               ("failed", len(self.failed)), ("orphan masks", len(self.orphans)),
               ("files skipped (not regular)", len(self.skipped_files))]
        if self.shard is not None:
            return [("shard", str(self.shard)), *run, ("workers", self.workers), ("seconds", round(self.seconds, 2))]
        return [*run, ("cases in store", self.cases), ("slices", self.slices), ("lesion slices", self.lesion_slices),
                ("lesion slices lost to resizing", self.lost_slices),
                ("lesion voxels lost to resizing", self.lost_voxels),
                ("empty:lesion", ratio_text(self.empty_per_lesion)), ("store size", human_bytes(self.store_bytes)),
                ("workers", self.workers), ("seconds", round(self.seconds, 2))]


def source_fingerprint(source: dict, layout: StoreLayout, consensus: str) -> str:
    """One hash of the sources' fingerprints (not their paths) with their rater ids, the layout, the consensus rule
    and the converter version."""
    def strip(entry: dict | None) -> dict | None:
        return None if entry is None else {k: v for k, v in entry.items() if k != "path"}

    payload = {"image": strip(source["image"]), "mask": strip(source["mask"]),
               "raters": {rater: strip(entry) for rater, entry in source["raters"].items()},
               "layout": layout.to_attrs(), "consensus": consensus, "converter": CONVERTER_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def convert_case(case: CaseSource, store_path: StoreLocation | str, layout: StoreLayout, source: dict,
                 consensus: str = "majority", area: Path | None = None,
                 allow_tilt: bool = False) -> CaseResult:
    """Read, validate, preprocess and atomically write one case, built under ``area`` (the run's partial area);
    a CaseError becomes the result's error line.

    Every rater mask is validated against the image (shape, affine, values), so a case whose raters disagree in
    geometry fails alone, naming the file; the stored mask is the raters' ``consensus`` (docs/raters.md)."""
    try:
        image = read_image(case.image_path, allow_tilt)
        masks = {rater: read_case_mask(path, image) for rater, path in case.masks.items()}
    except CaseError as err:
        return CaseResult(case.case_id, error=str(err))
    notes = image_notes(image)
    unit, geom = preprocess_image(image.data, image.affine, layout)
    del image
    labeled = label_case(masks, geom, consensus) if masks else None
    del masks
    attrs = {"case_id": case.case_id, "source": source,
             "source_fingerprint": source_fingerprint(source, layout, consensus),
             "geometry": geom.to_attrs(), "n_slices": int(unit.shape[0]), "labeled": labeled is not None,
             "lesion_pixels": None, "source_lesion_voxels": None, **(labeled.attrs if labeled else {}),
             "consensus": consensus, "layout": layout.to_attrs(), "converter_version": CONVERTER_VERSION}
    if labeled is None:
        write_case(store_path, case.case_id, encode(unit, layout.dtype), None, attrs, area=area)
    else:
        write_case(store_path, case.case_id, encode(unit, layout.dtype), labeled.mask, attrs, labeled.raters,
                   labeled.rater_ids, area=area)
    return CaseResult(case.case_id, int(unit.shape[0]), sum(p > 0 for p in attrs["lesion_pixels"] or []),
                      _source_bytes(source), notes=notes)


def convert(raw: Path, store_path: StoreLocation | str, cfg: ConvertConfig = ConvertConfig(),
            progress: bool = True) -> ConvertReport:
    """Convert every case found in ``raw`` into the store at ``store_path`` (a folder, or a URL in object storage:
    docs/scaling.md); see the module docstring.

    A full disk, read-only file system or denied access raises StorageError naming the file.
    """
    with storage_errors(store_path):
        return _convert(raw, store_path, cfg, progress)


def _convert(raw: Path, store_path: StoreLocation | str, cfg: ConvertConfig, progress: bool) -> ConvertReport:
    start = time.perf_counter()
    raw, store_path = Path(raw), open_location(store_path)
    found = find_cases(raw)
    if not found.cases and not found.problems:
        skipped = f" ({len(found.skipped)} skipped, first: {found.skipped[0]})" if found.skipped else ""
        raise UsageError(f"{raw}: no NIfTI or DICOM cases found{skipped}; expected NAME_ct/NAME_seg files, "
                         "imagesTr/ + labelsTr/, images/ + masks/ or DICOM series folders (see docs/store-format.md)")
    first = cfg.shard is None or cfg.shard.index == 1  # RAW's own problems are reported by one job of an array
    report = ConvertReport(store_path, failed=list(found.problems) if first else [],
                           orphans=list(found.orphans) if first else [],
                           skipped_files=list(found.skipped) if first else [], shard=cfg.shard)
    store = _open_store(store_path, cfg)
    cases = found.cases if cfg.shard is None else cfg.shard.select(found.cases)
    todo = _cases_to_convert(cases, store, cfg.layout, report)
    workers = min(cfg.workers or os.cpu_count() or 1, max(len(todo), 1))
    with run_area(store_path) as area, open_executor(workers, cfg.scheduler if todo else None) as executor:
        report.workers = executor.workers
        calls = [(case, store_path, cfg.layout, source, store.consensus, area, cfg.allow_tilt)
                 for case, source in todo]
        for result in _with_progress(executor.results(convert_case, calls, _died), len(calls), progress):
            _record(result, report)
    if cfg.shard is None:
        _finish(store_path, cfg.split, report)
    report.seconds = time.perf_counter() - start
    return report


def _open_store(store_path: Path, cfg: ConvertConfig) -> SliceStore:
    """Under the store lock (for a moment): create or open the store, clear leftovers of killed lock holders and
    record the split options when given, so that `ctprep index` uses them too. Then, without the lock, clear the
    partial areas of killed runs (never a live run's)."""
    with store_lock(store_path, wait_s=START_LOCK_WAIT_S):
        store = create_or_open(store_path, cfg.layout, cfg.consensus)
        clear_leftovers(store_path, cfg.stale_after_s, runs=False)
        if cfg.split is not None:
            update_root_attrs(store_path, {"split_config": cfg.split.to_attrs()})
    clear_partial(store_path, cfg.stale_after_s, locked=False)
    return store


def _cases_to_convert(cases: list[CaseSource], store: SliceStore, layout: StoreLayout,
                      report: ConvertReport) -> list[tuple[CaseSource, dict]]:
    """Cases to (re)convert with their source attrs; unchanged complete cases go to report.skipped."""
    complete = set(store.case_ids())
    todo = []
    for case in cases:
        try:
            source = source_attrs(case)
        except OSError as err:
            report.failed.append(f"{err.filename}: unreadable ({err.strerror}); check the file's permissions")
            continue
        if case.case_id in complete and _unchanged(store, case.case_id, source, layout, store.consensus):
            report.skipped.append(case.case_id)
        else:
            todo.append((case, source))
    todo.sort(key=lambda item: -_source_bytes(item[1]))  # largest first: even finish
    return todo


def _source_bytes(source: dict) -> int:
    """Bytes of a case's source files: the image and every rater's mask."""
    return source["image"]["size"] + sum(entry["size"] for entry in source["raters"].values())


def _unchanged(store: SliceStore, case_id: str, source: dict, layout: StoreLayout, consensus: str) -> bool:
    """The resume rule: same source fingerprint (sources, layout, converter version) and same layout, and the
    arrays pass the cheap check (metadata present, shapes, every shard of its recorded size): a re-run repairs
    a case whose shard or array metadata was deleted or truncated."""
    attrs = store.case_attrs(case_id)
    return (attrs.get("source_fingerprint") == source_fingerprint(source, layout, consensus)
            and attrs.get("layout") == layout.to_attrs() and not case_faults(store.path, case_id, layout.size))


def _with_progress(results, total: int, progress: bool):
    """Yield ``results`` (CaseResults) unchanged, advancing a progress bar of ``total`` cases."""
    with progress_bar("cases") if progress else nullcontext(None) as bar:
        task = bar.add_task("converting", total=total, rate="", status="") if bar else None
        start = time.perf_counter()
        for done, result in enumerate(results, start=1):
            if bar is not None:
                status = f"[red]{result.case_id} failed" if result.error else result.case_id
                bar.update(task, advance=1, rate=rate_text(done, time.perf_counter() - start, "cases"), status=status)
            yield result


def _died(call: tuple) -> CaseResult:
    """The result of a case whose worker process was killed (e.g. out of memory): it fails, not the run."""
    case = call[0]
    return CaseResult(case.case_id, error=f"{case.image_path}: the worker process died while converting "
                                           "(out of memory?); re-run with fewer --workers")


def _record(result: CaseResult, report: ConvertReport) -> None:
    """Add one case's outcome to the report."""
    report.notes.extend(result.notes)
    if result.error:
        report.failed.append(result.error)
    else:
        report.converted.append(result.case_id)
        report.source_bytes += result.source_bytes


def _finish(store_path: Path, split: SplitConfig | None, report: ConvertReport) -> None:
    """Rebuild the index from every complete case, record the split config, fill totals. Files whose content
    would not change are not rewritten, and run statistics stay in the report (printed), out of the store."""
    index = rebuild_index(store_path, split, drop_obsolete=bool(report.converted))
    report.cases = int(index["case_id"].nunique())
    report.slices = len(index)
    report.labeled_slices = int(index["labeled"].sum())
    report.lesion_slices = int(index["has_lesion"].sum())
    report.lost_slices, report.lost_voxels = lost_to_resize(index)
    report.store_bytes = disk_bytes(store_path)
