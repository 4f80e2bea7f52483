"""`ctmodel pseudo-label`: a trained run predicts the unlabeled train cases of a store, and each prediction is
stored as the case's pseudo-label (``cases/<id>/pseudo`` + its record, ``ctprep.pseudo``) with a per-slice
confidence; docs/semi-supervised.md.

Run: ctmodel pseudo-label runs/dual store.zarr --threshold 0.5 --min-confidence 0.9
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmodel.config import check_inference
from ctprep.errors import RunError, UsageError
from ctprep.location import open_location, require_local
from ctprep.store import SliceStore

CASE_CHOICES = ("unlabeled", "all-unlabeled-in-split")  # incremental (skip what this checkpoint did) | every one
SPLIT = "train"  # val and test cases are never pseudo-labelled: they measure the model
LUNG_FIELD_HU = (-950.0, -200.0)  # aerated lung and ground glass; air (-1000) and fat (-100 +- noise) stay out
CONFIDENCE_MEASURE = "lung-field mean of max(p, 1 - p)"  # the record's name of the measure below


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Options of `ctmodel pseudo-label`."""

    threshold: float = 0.5  # pseudo mask = p >= threshold on the store grid
    min_confidence: float = 0.0  # a case whose mean slice confidence is below it gets no pseudo-label (0: keep all)
    cases: str = "unlabeled"  # unlabeled: skip cases already done by this checkpoint and threshold
    checkpoint: str = "best"  # best (highest val Dice) or last
    device: str = "auto"
    batch_size: int | None = None  # slices per forward pass (None: 32 on a GPU, 4 on the CPU)
    precision: str = "bf16"  # autocast on CUDA; CPU runs fp32

    def __post_init__(self) -> None:
        check_inference(self.checkpoint, self.threshold, self.batch_size)
        if self.cases not in CASE_CHOICES:
            raise UsageError(f"--cases {self.cases}: expected one of {', '.join(CASE_CHOICES)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"--min-confidence {self.min_confidence}: expected a confidence between 0 and 1")


@dataclass
class PseudoLabelReport:
    """What one `ctmodel pseudo-label` call did, case by case."""

    labelled: dict[str, float] = field(default_factory=dict)  # case -> case confidence, pseudo-label written
    left_out: dict[str, float] = field(default_factory=dict)  # case -> confidence below --min-confidence
    skipped: list[str] = field(default_factory=list)  # already pseudo-labelled by this checkpoint and threshold
    lesion_slices: int = 0  # slices with pseudo-lesion among the labelled cases
    seconds: float = 0.0

    def summary_rows(self) -> list[tuple[str, object]]:
        """The closing table: cases labelled, left out and skipped, lesion slices, mean confidence of the cases
        labelled in this run ("-" when none), seconds."""
        confidence = float(np.mean(list(self.labelled.values()))) if self.labelled else "-"  # none labelled
        return [("cases pseudo-labelled", len(self.labelled)), ("left out by confidence", len(self.left_out)),
                ("skipped as already done", len(self.skipped)), ("lesion slices found", self.lesion_slices),
                ("mean confidence", confidence), ("seconds", self.seconds)]

    def left_out_rows(self) -> list[tuple[str, float]]:
        """One (case, confidence) row per case left out by --min-confidence."""
        return sorted(self.left_out.items())


def lung_field(image: np.ndarray, probs: np.ndarray, threshold: float, window_hu: tuple[float, float]) -> np.ndarray:
    """Boolean (Z, S, S) lung field of stored [0, 1] ``image`` slices: intensity within LUNG_FIELD_HU mapped
    through the store's window, plus every pixel the model marks (p >= threshold)."""
    lo, hi = window_hu
    low, high = ((hu - lo) / (hi - lo) for hu in LUNG_FIELD_HU)
    return ((image >= low) & (image <= high)) | (probs >= threshold)


def slice_confidence(probs: np.ndarray, field: np.ndarray) -> np.ndarray:
    """(Z,) mean of max(p, 1 - p) over each slice's ``field``; a slice with an empty field uses the whole slice."""
    sure = np.maximum(probs, 1.0 - probs)
    counts = field.sum(axis=(1, 2))
    inside = np.where(field, sure, 0.0).sum(axis=(1, 2)) / np.maximum(counts, 1)
    return np.where(counts > 0, inside, sure.mean(axis=(1, 2)))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate_cases(store: SliceStore) -> list[str]:
    """Unlabeled cases of the train split (the index decides), sorted; RunError when there are none."""
    index = store.index()
    rows = index[~index["labeled"] & (index["split"] == SPLIT)]
    cases = sorted(rows["case_id"].unique().tolist())
    if not cases:
        raise RunError(f"{store.path}: expected unlabeled cases in the train split, found none; add scans without "
                       "masks (`ctprep demo RAW --unlabeled N`, or images without mask files) and re-run "
                       f"`ctprep convert RAW {store.path}`")
    return cases


def is_done(record: dict | None, checkpoint_sha256: str, threshold: float) -> bool:
    """Whether a pseudo-label ``record`` came from this very checkpoint file and threshold."""
    return bool(record) and record.get("checkpoint_sha256") == checkpoint_sha256 \
        and record.get("threshold") == threshold


def case_confidence(record: dict) -> float:
    """A case's confidence: the mean of its per-slice confidences."""
    return float(np.mean(record["confidence"])) if record["confidence"] else 1.0


def predict_case(store: SliceStore, case_id: str, model, device,
                 cfg: PseudoLabelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pseudo mask (Z, S, S) uint8, per-slice confidence (Z,)) of one stored case."""
    import torch

    from ctmodel.device import inference_batch
    from ctmodel.inference import predict_volume

    image = store.read_image(case_id)
    tensor = torch.from_numpy(image).to(device)
    probs = predict_volume(model, tensor, inference_batch(tensor.device, cfg.batch_size), cfg.precision).cpu().numpy()
    lung = lung_field(image, probs, cfg.threshold, store.layout.window_hu)
    return (probs >= cfg.threshold).astype(np.uint8), slice_confidence(probs, lung)


def make_record(provenance: dict, mask: np.ndarray, confidence: np.ndarray) -> dict:
    """The case attribute ``pseudo``: ``provenance`` plus per-slice lesion_pixels and confidence, and the time."""
    from ctprep import __version__
    return {**provenance, "confidence_measure": CONFIDENCE_MEASURE,
            "lesion_pixels": [int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1)],
            "confidence": [float(c) for c in confidence], "ctstack_version": __version__}


def pseudo_label(run_dir: Path, store_path: Path, cfg: PseudoLabelConfig = PseudoLabelConfig(),
                 progress: bool = True) -> PseudoLabelReport:
    """`ctmodel pseudo-label`: predict the store's unlabeled train cases with a run's checkpoint and store each
    prediction as the case's pseudo-label, under the store lock; index.parquet is rebuilt once at the end."""
    from ctmodel.checkpoint import load_run
    from ctmodel.device import resolve_device
    from ctmodel.evaluate import check_layout
    from ctprep.lock import store_lock
    from ctprep.partials import clear_partial

    start = time.perf_counter()
    store = SliceStore.open(require_local(open_location(store_path), "ctmodel pseudo-label"))
    device = resolve_device(cfg.device)
    run = load_run(Path(run_dir), cfg.checkpoint, device)
    check_layout(run.layout, store, Path(run_dir), doing="pseudo-label")
    provenance = {"run": str(Path(run_dir).resolve()), "checkpoint": cfg.checkpoint,
                  "checkpoint_sha256": file_sha256(run.path), "threshold": cfg.threshold}
    report = PseudoLabelReport()
    with store_lock(store.path):
        clear_partial(store.path)  # leftovers of a killed writer (convert does the same)
        cases = candidate_cases(store)
        try:
            label_cases(store, cases, run.model, device, cfg, provenance, report, progress)
        finally:  # the index matches the cases even after an interruption (same bytes: the file is not rewritten)
            rebuild_index(store)
    report.seconds = time.perf_counter() - start
    return report


def label_cases(store: SliceStore, cases: list[str], model, device, cfg: PseudoLabelConfig, provenance: dict,
                report: PseudoLabelReport, progress: bool = True) -> None:
    """Predict, cut by confidence and write (or remove) each case's pseudo-label, filling ``report``."""
    from ctprep.console import track
    from ctprep.pseudo import write_pseudo

    for case_id in track(cases, "pseudo-label", unit="case") if progress else cases:
        record = store.pseudo_record(case_id)
        if cfg.cases == "unlabeled" and is_done(record, provenance["checkpoint_sha256"], cfg.threshold):
            confidence = case_confidence(record)
            if confidence >= cfg.min_confidence:
                report.skipped.append(case_id)
                continue
            write_pseudo(store.path, case_id, None)  # done before, but below today's cut
            report.left_out[case_id] = confidence
            continue
        mask, slices = predict_case(store, case_id, model, device, cfg)
        record = make_record(provenance, mask, slices)
        confidence = case_confidence(record)
        if confidence < cfg.min_confidence:
            write_pseudo(store.path, case_id, None)
            report.left_out[case_id] = confidence
            continue
        write_pseudo(store.path, case_id, mask, record)
        report.labelled[case_id] = confidence
        report.lesion_slices += int(sum(n > 0 for n in record["lesion_pixels"]))


def rebuild_index(store: SliceStore) -> None:
    """Rewrite index.parquet from the cases, keeping every case's split."""
    from ctprep.index import build_index, read_index, write_index

    splits = read_index(store.path, check=False).groupby("case_id")["split"].first().astype(str).to_dict()
    write_index(store.path, build_index(store, splits))
