"""Which pseudo-labelled patients a `ctsample plan --pseudo` takes: the split's unlabeled patients that hold a
pseudo-label (`ctmodel pseudo-label`), their confidence, and the cut that leaves the least confident out.

A patient's confidence is the mean of its slices' ``pseudo_confidence`` (docs/sampling.md, "Pseudo-labelled
patients"). The rows returned carry ``has_lesion`` = ``pseudo_has_lesion``, so the plan's per-patient rule
(``ctsample.plan.classify``) runs on them unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ctprep.errors import PlanError, UsageError

if TYPE_CHECKING:
    from ctsample.plan import PlanConfig

PSEUDO_ROLE = "pseudo"  # the plan role of every row of a pseudo-labelled patient
LEFT_OUT = "left out"  # the report source of a pseudo-labelled patient below --min-confidence
LEFT_OUT_ROW = "pseudo left out"  # the summary row of those patients (only when there is one)
LABEL_HINT = "run `ctmodel pseudo-label RUN STORE` with a trained run first"


def pseudo_rows(index: pd.DataFrame, split: str) -> pd.DataFrame:
    """The split's pseudo-labelled slices (unlabeled cases with a pseudo-label) sorted by case and slice, with
    ``has_lesion`` taken from ``pseudo_has_lesion``; PlanError when the split holds none."""
    in_split = index if split == "all" else index[index["split"] == split]
    if "pseudo_confidence" not in in_split.columns:
        raise PlanError(f"split {split!r}: the index has no pseudo-label columns (expected store format 4, found "
                        "an older index); run `ctprep upgrade STORE`, then " + LABEL_HINT)
    rows = in_split[~in_split["labeled"] & in_split["pseudo_confidence"].notna()]
    if rows.empty:
        raise PlanError(f"split {split!r} holds no pseudo-labelled patient (expected unlabeled cases with a "
                        f"pseudo-label for --pseudo, found none); {LABEL_HINT}")
    rows = rows.sort_values(["case_id", "slice"], kind="stable").reset_index(drop=True)
    return rows.assign(has_lesion=rows["pseudo_has_lesion"].to_numpy(bool))


def patient_confidence(rows: pd.DataFrame) -> pd.Series:
    """Per pseudo-labelled patient (index: case_id, sorted): the mean of its slices' pseudo_confidence."""
    confidence = rows["pseudo_confidence"].to_numpy(np.float64)
    return pd.Series(confidence).groupby(rows["case_id"].astype(str).to_numpy(), sort=True).mean()


def confidence_cut(rows: pd.DataFrame, min_confidence: float) -> tuple[pd.DataFrame, pd.Series]:
    """(the rows of the patients whose confidence is >= ``min_confidence``, the confidence of every patient);
    0 keeps every patient."""
    confidence = patient_confidence(rows)
    kept = confidence.index[confidence >= min_confidence]
    return rows[rows["case_id"].astype(str).isin(kept)].reset_index(drop=True), confidence


def left_out_report(rows: pd.DataFrame, confidence: pd.Series, min_confidence: float) -> pd.DataFrame:
    """Per patient below the cut: case_id, split, lesion and empty slices (by its pseudo-label), confidence and
    the reason it is left out."""
    low = confidence[confidence < min_confidence]
    picked = rows[rows["case_id"].astype(str).isin(low.index)]
    grouped = picked.groupby(picked["case_id"].astype(str), sort=True)
    lesion = grouped["has_lesion"].sum().reindex(low.index).to_numpy(np.int64)
    slices = grouped.size().reindex(low.index).to_numpy(np.int64)
    return pd.DataFrame({
        "case_id": low.index.to_numpy(), "split": grouped["split"].first().reindex(low.index).astype(str).to_numpy(),
        "lesion": lesion, "empty_before": slices - lesion, "confidence": low.to_numpy(),
        "reason": [f"pseudo confidence {c:.3f} < --min-confidence {min_confidence:g}: left out" for c in low],
    })


def summary_groups(patients: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """(the planned patients of a plan report, each one's summary row): its split, "<split> (pseudo)" for a
    pseudo-labelled patient; patients left out below the confidence cut are in none."""
    source = patients["source"] if "source" in patients else pd.Series("labeled", index=patients.index)
    planned = patients[source != LEFT_OUT]
    return planned, planned["split"].where(source[planned.index] != PSEUDO_ROLE, planned["split"] + " (pseudo)")


def left_out_rows(patients: pd.DataFrame) -> list[tuple]:
    """The summary row (SUMMARY_HEADERS) of the pseudo-labelled patients the cut left out: their count, their
    pseudo-lesion and empty slices; none when no patient was left out."""
    out = patients[patients["source"] == LEFT_OUT] if "source" in patients else patients.iloc[:0]
    if out.empty:
        return []
    return [(LEFT_OUT_ROW, len(out), "-", int(out["lesion"].sum()), "-", "-", int(out["empty_before"].sum()),
             "-", "-", "-")]


def check_pseudo_options(pseudo: bool, pseudo_weight: float, min_confidence: float, alone: bool = False) -> None:
    """UsageError for a weight that is not a finite number >= 0, a cut outside [0, 1], or (unless ``alone``, as
    for `ctmodel train`, whose --plan FILE may set them) either without --pseudo."""
    if not (np.isfinite(pseudo_weight) and pseudo_weight >= 0):
        raise UsageError(f"--pseudo-weight {pseudo_weight}: expected a number >= 0 (1 = weigh pseudo rows like "
                         "labeled ones)")
    if not 0.0 <= min_confidence <= 1.0:
        raise UsageError(f"--min-confidence {min_confidence}: expected a confidence in [0, 1] (0 keeps every "
                         "pseudo-labelled patient)")
    if not pseudo and not alone and (pseudo_weight != 1.0 or min_confidence != 0.0):
        raise UsageError("--pseudo-weight/--min-confidence: expected them with --pseudo, found them alone; add "
                         "--pseudo or drop them")


def pseudo_name(cfg: PlanConfig) -> str:
    """The plan file name's pseudo part: '' without --pseudo, else '-pseudo' plus '-w<weight>' and '-c<cut>'."""
    if not cfg.pseudo:
        return ""
    weight = "" if cfg.pseudo_weight == 1.0 else f"-w{cfg.pseudo_weight:g}"
    cut = "" if cfg.min_confidence == 0.0 else f"-c{cfg.min_confidence:g}"
    return f"-pseudo{weight}{cut}"
