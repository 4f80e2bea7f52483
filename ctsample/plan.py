"""Balanced slice plans: every lesion slice, its empty neighbours, then random far empties up to a ratio.

The rule (docs/sampling.md), per labeled patient of the split:
1. every lesion slice (role ``lesion``);
2. every empty slice within ``neighbours`` slices of a lesion slice (role ``neighbour``);
3. random far empty slices (role ``fill``) until empty:lesion reaches ``ratio``, or the patient runs out.
Lesion-free patients give ``lesion_free`` of their slices per epoch as fill. Fills (and, with ``strict``,
neighbours) are drawn afresh every epoch from numpy's generator seeded with (seed, epoch).
With ``pseudo``, the split's pseudo-labelled patients go through the same rule on their pseudo-label (role
``pseudo``, fills drawn from (seed, epoch, 1)); those below ``min_confidence`` are left out and reported.

Everything is vectorised over the index: no Python loop per slice or per patient.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ctprep import __version__
from ctprep.console import ratio_text
from ctprep.errors import PlanError, PlanNotFoundError, UsageError
from ctprep.index import index_fingerprint, read_index
from ctprep.location import StoreLocation, is_object, open_location, write_file
from ctprep.outputs import check_output
from ctprep.splits import check_split_choice
from ctsample.planfile import PLAN_COLUMNS, ROLES, check_rows
from ctsample.pseudo import (LEFT_OUT, PSEUDO_ROLE, check_pseudo_options, confidence_cut, left_out_report,
                             left_out_rows, pseudo_name, pseudo_rows, summary_groups)

METADATA_KEY = b"ctstack.plan"
PLANS_DIR = "plans"
REPORT_COLUMNS = ("case_id", "split", "lesion", "empty_before", "ratio_before", "neighbour", "fill", "target_empty",
                  "ratio_target", "ratio_after", "planned", "reason")
SUMMARY_HEADERS = ("split", "patients", "lesion-free", "lesion", "neighbour", "fill", "empty before", "ratio before",
                   "ratio after", "unmet")  # the columns of summary_rows, as `ctsample plan` prints them
OFF_TARGET_HEADERS = ("case", "lesion", "neighbour", "fill", "target", "reason")  # of off_target_rows
LESION_BY = ("consensus", "any", "all")  # which slices count as lesion slices (docs/raters.md, "Sampling")
PARTIAL_ROW = "some raters only"  # the summary row of slices some but not all raters marked
PSEUDO_PARAMS = ("pseudo", "pseudo_weight", "min_confidence")  # recorded in a plan only when pseudo is on


@dataclass(frozen=True)
class PlanConfig:
    """The sampling rule's parameters (see docs/sampling.md)."""

    ratio: float | None = 1.75  # target empty:lesion per patient; None = natural (every slice)
    neighbours: int = 1  # empty slices within this distance of a lesion slice are always taken (0 = none)
    split: str = "train"  # train, val, test or all
    epochs: int = 1  # plan epochs; lesion and neighbour slices in each, fill drawn afresh per epoch
    seed: int = 0
    strict: bool = False  # sample neighbours down when they alone exceed the ratio
    lesion_free: float = 0.1  # fraction of a lesion-free patient's slices taken per epoch (0 = leave them out)
    lesion_by: str = "consensus"  # lesion slice = consensus marks it (has_lesion), any rater, or all raters
    pseudo: bool = False  # also plan the split's pseudo-labelled patients (role "pseudo"); off = labeled only
    pseudo_weight: float = 1.0  # loss weight of pseudo rows, recorded for `ctmodel train` (1 = like labeled ones)
    min_confidence: float = 0.0  # pseudo patients whose mean slice confidence is below this are left out

    def __post_init__(self) -> None:
        if self.ratio is not None and not (np.isfinite(self.ratio) and self.ratio >= 0):
            raise UsageError(f"--ratio {self.ratio}: expected a number >= 0 (e.g. 1.75) or 'natural'")
        if self.neighbours < 0:
            raise UsageError(f"--neighbours {self.neighbours}: expected 0 or more slices")
        check_split_choice(self.split)
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs}: expected 1 or more")
        if not 0.0 <= self.lesion_free <= 1.0:
            raise UsageError(f"--lesion-free {self.lesion_free}: expected a fraction in [0, 1]")
        if self.lesion_by not in LESION_BY:
            raise UsageError(f"--lesion-by {self.lesion_by}: expected one of {', '.join(LESION_BY)}")
        check_pseudo_options(self.pseudo, self.pseudo_weight, self.min_confidence)

    @property
    def ratio_name(self) -> str:
        """The target ratio as written in plan file names and summaries: '1.75', or 'natural'."""
        return "natural" if self.ratio is None else f"{self.ratio:g}"


@dataclass
class Plan:
    """A plan: its rows (epoch, case_id, slice, role), its parameters, and the per-patient report."""

    slices: pd.DataFrame
    params: dict
    patients: pd.DataFrame  # per patient (REPORT_COLUMNS), see patient_report(); empty for a loaded plan
    partial: dict | None = None  # slices only some raters marked (see partial_counts); None: no multi-rater case


def parse_ratio(text: str) -> float | None:
    """'1.75' -> 1.75, 'natural' -> None (keep every slice)."""
    if text.strip().lower() == "natural":
        return None
    try:
        return float(text)
    except ValueError as err:
        raise UsageError(f"--ratio {text!r}: expected a number such as 1.75, 0, or 'natural'") from err


def plan_store(store_path: StoreLocation | str, cfg: PlanConfig = PlanConfig(),
               out: Path | None = None) -> tuple[Plan, StoreLocation]:
    """Plan the store's slices and save the plan to ``out`` (default ``default_plan_path``, inside the store: a
    key below STORE/plans/ for a store in object storage): what `ctsample plan` runs. The output path is checked
    first: never one of a store's own files."""
    path = check_output(out or default_plan_path(store_path, cfg), "plan")
    plan = make_plan(read_index(store_path), cfg)
    return plan, save_plan(plan, path)


def make_plan(index: pd.DataFrame, cfg: PlanConfig = PlanConfig()) -> Plan:
    """Plan ``cfg.epochs`` epochs over the labeled patients of ``cfg.split`` in ``index`` (the store's index)."""
    rows = labeled_rows(index, cfg.split)
    slices = classify(rows, cfg.neighbours, cfg.lesion_by)
    counts = patient_counts(slices, cfg)
    epochs = [plan_epoch(slices, counts, cfg, epoch) for epoch in range(cfg.epochs)]
    patients = patient_report(counts, cfg)
    if cfg.pseudo:
        pseudo_epochs, pseudo_patients = plan_pseudo(index, cfg)
        if pseudo_epochs:  # none when the confidence cut left every pseudo-labelled patient out
            epochs = [pd.concat([own, extra], ignore_index=True) for own, extra in zip(epochs, pseudo_epochs)]
        patients = pd.concat([patients.assign(source="labeled", confidence=np.nan), pseudo_patients],
                             ignore_index=True)
    planned = pd.concat(epochs, ignore_index=True)
    return Plan(slices=planned, params=plan_params(index, cfg), patients=patients,
                partial=partial_counts(rows, slices, planned, cfg.epochs))


def plan_params(index: pd.DataFrame, cfg: PlanConfig) -> dict:
    """The parameters a plan file records: the rule, the index fingerprint, the version; lesion_by only when not
    consensus and the pseudo options only with --pseudo, so plans of today's rule are byte-identical to before."""
    params = {**asdict(cfg), "index_fingerprint": index_fingerprint(index, pseudo=cfg.pseudo),
              "ctstack_version": __version__,
              "repeats": False}  # make_plan never plans a slice twice in an epoch; see planfile.check_rows
    if cfg.lesion_by == "consensus":  # today's rule: parameters (and so the file) exactly as before
        del params["lesion_by"]
    if not cfg.pseudo:
        for name in PSEUDO_PARAMS:
            del params[name]
    return params


def plan_pseudo(index: pd.DataFrame, cfg: PlanConfig) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """The pseudo-labelled patients' rows per epoch (role ``pseudo``; [] when the cut leaves every one out) and
    their report rows (source ``pseudo``, or ``left out`` below ``cfg.min_confidence``, with their confidence)."""
    rows = pseudo_rows(index, cfg.split)
    kept, confidence = confidence_cut(rows, cfg.min_confidence)
    left_out = left_out_report(rows, confidence, cfg.min_confidence).assign(
        source=LEFT_OUT, neighbour=0, fill=0, target_empty=0, planned=0)
    if kept.empty:
        return [], left_out
    slices = classify(kept, cfg.neighbours)  # has_lesion is the pseudo-label's here
    counts = patient_counts(slices, cfg)
    epochs = [plan_epoch(slices, counts, cfg, epoch, stream=(1,)).assign(role=PSEUDO_ROLE)
              for epoch in range(cfg.epochs)]
    report = patient_report(counts, cfg).assign(source=PSEUDO_ROLE)
    report["confidence"] = confidence.reindex(report["case_id"].astype(str)).to_numpy()
    return epochs, pd.concat([report, left_out], ignore_index=True)


def lesion_flags(rows: pd.DataFrame, lesion_by: str = "consensus") -> np.ndarray:
    """Per row, whether it counts as a lesion slice: the consensus marks it (``has_lesion``), at least one rater
    (``any``), or every rater (``all``: raters_with_lesion == n_raters)."""
    if lesion_by == "consensus":
        return rows["has_lesion"].to_numpy(bool)
    marked = rows["raters_with_lesion"].to_numpy(np.int64)
    if lesion_by == "any":
        return marked >= 1
    return (marked >= 1) & (marked == rows["n_raters"].to_numpy(np.int64))


def partial_mask(rows: pd.DataFrame) -> np.ndarray:
    """Per row: some but not all of the case's raters marked the slice (0 < raters_with_lesion < n_raters)."""
    marked = rows["raters_with_lesion"].to_numpy(np.int64)
    return (marked > 0) & (marked < rows["n_raters"].to_numpy(np.int64))


def partial_counts(rows: pd.DataFrame, slices: pd.DataFrame, planned: pd.DataFrame, epochs: int) -> dict | None:
    """The before/after counts of the slices only some raters marked: patients holding any, how many count as
    lesion and as empty before, and how many the plan takes per epoch as neighbour and fill (mean over epochs);
    None when no case of the split has two or more raters."""
    if "n_raters" not in rows or not (rows["n_raters"] >= 2).any():
        return None
    partial = partial_mask(rows)
    kind = slices["kind"].to_numpy()[partial]
    keys = pd.DataFrame({"case_id": slices["case_id"].to_numpy()[partial], "slice": slices["slice"].to_numpy()[partial]})
    picked = planned.astype({"slice": np.int64}).merge(keys, on=["case_id", "slice"])
    return {"patients": int(slices.loc[partial, "case"].nunique()), "lesion": int((kind == 0).sum()),
            "empty_before": int((kind != 0).sum()),
            "neighbour": float((picked["role"] == "neighbour").sum()) / epochs,
            "fill": float((picked["role"] == "fill").sum()) / epochs}


def labeled_rows(index: pd.DataFrame, split: str) -> pd.DataFrame:
    """The split's labeled slices sorted by case and slice; PlanError when there are none."""
    in_split = index if split == "all" else index[index["split"] == split]
    if in_split.empty:
        raise PlanError(f"split {split!r} holds no case; assign cases with `ctsample split STORE` or plan "
                        "another --split")
    rows = in_split[in_split["labeled"]]
    if rows.empty:
        raise PlanError(f"split {split!r} holds no labeled case (only images without masks), and plans are for "
                        "supervised training; add masks or plan another --split")
    return rows.sort_values(["case_id", "slice"], kind="stable").reset_index(drop=True)


def classify(rows: pd.DataFrame, neighbours: int, lesion_by: str = "consensus") -> pd.DataFrame:
    """(case_id, slice, split, kind) with kind 0 = lesion (by ``lesion_flags``), 1 = neighbour empty, 2 = far
    empty; plus case codes."""
    codes, cases = pd.factorize(rows["case_id"].astype(str), sort=True)
    slice_index = rows["slice"].to_numpy(np.int64)
    lesion = lesion_flags(rows, lesion_by)
    key = codes.astype(np.int64) * (1 << 32) + slice_index  # cases never within reach of each other
    near = np.zeros(len(rows), bool)
    lesion_keys = key[lesion]
    if neighbours > 0 and lesion_keys.size:
        after = np.searchsorted(lesion_keys, key)  # first lesion key >= key
        next_gap = np.where(after < lesion_keys.size, lesion_keys[np.minimum(after, lesion_keys.size - 1)] - key,
                            np.iinfo(np.int64).max)
        prev_gap = np.where(after > 0, key - lesion_keys[np.maximum(after - 1, 0)], np.iinfo(np.int64).max)
        near = ~lesion & (np.minimum(next_gap, prev_gap) <= neighbours)
    kind = np.where(lesion, 0, np.where(near, 1, 2)).astype(np.int8)
    return pd.DataFrame({"case": codes, "case_id": np.asarray(cases)[codes], "slice": slice_index,
                         "split": rows["split"].astype(str).to_numpy(), "kind": kind})


def kind_counts(slices: pd.DataFrame) -> pd.DataFrame:
    """Slices per patient (rows: case code) and kind (columns 0 lesion, 1 neighbour empty, 2 far empty)."""
    return pd.crosstab(slices["case"], slices["kind"]).reindex(columns=[0, 1, 2], fill_value=0)


def patient_counts(slices: pd.DataFrame, cfg: PlanConfig) -> pd.DataFrame:
    """Per patient: availability (lesion, neighbour, far) and what one epoch takes of each, with the reason for
    any shortfall. Counts are the same every epoch; only which far (and, strict, which neighbour) slices vary."""
    per_kind = kind_counts(slices)
    counts = pd.DataFrame({"case_id": slices.groupby("case")["case_id"].first(),
                           "split": slices.groupby("case")["split"].first(),
                           "lesion": per_kind[0], "neighbour_available": per_kind[1], "far_available": per_kind[2]})
    lesion = counts["lesion"].to_numpy()
    neighbour = counts["neighbour_available"].to_numpy()
    far = counts["far_available"].to_numpy()
    empty = neighbour + far
    if cfg.ratio is None:  # natural: every slice, lesion-free patients' too
        target = empty.copy()
    else:
        target = np.floor(cfg.ratio * lesion + 0.5).astype(np.int64)
        lesion_free_share = np.ceil(cfg.lesion_free * empty - 1e-9).astype(np.int64)
        target = np.where(lesion == 0, lesion_free_share, target)
    take_neighbour = np.minimum(neighbour, target) if cfg.strict else neighbour
    take_fill = np.clip(target - take_neighbour, 0, far)
    counts["target_empty"] = target
    counts["neighbour"] = take_neighbour
    counts["fill"] = take_fill
    counts["reason"] = shortfall_reasons(lesion, take_neighbour, take_fill, target, empty, cfg)
    return counts.reset_index(drop=True)


def shortfall_reasons(lesion, neighbour, fill, target, empty, cfg: PlanConfig) -> np.ndarray:
    """Why a patient's achieved empty count differs from its target ('' where it matches)."""
    taken = neighbour + fill
    reasons = np.full(len(lesion), "", dtype=object)
    reasons[taken < target] = [f"only {e} empty slices, target {t}" for e, t in zip(empty[taken < target],
                                                                                    target[taken < target])]
    over = taken > target
    reasons[over] = [f"{n} neighbour slices exceed the target {t} (kept; --strict samples them down)"
                     for n, t in zip(neighbour[over], target[over])]
    if cfg.ratio is not None:
        reasons[(lesion == 0) & (cfg.lesion_free == 0)] = "lesion-free: left out (--lesion-free 0)"
        reasons[(lesion == 0) & (cfg.lesion_free > 0) & (taken == target)] = "lesion-free: fill only"
    return reasons


def plan_epoch(slices: pd.DataFrame, counts: pd.DataFrame, cfg: PlanConfig, epoch: int,
               stream: tuple[int, ...] = ()) -> pd.DataFrame:
    """One epoch's rows: lesion slices, neighbours (all, or a fresh sample when strict), a fresh far fill; the
    generator is seeded with (seed, epoch, *stream) (pseudo patients draw from their own stream (1,))."""
    rng = np.random.default_rng([cfg.seed, epoch, *stream])
    kind = slices["kind"].to_numpy()
    case = slices["case"].to_numpy()
    quota = np.zeros(len(slices), np.int64)
    quota[kind == 1] = counts["neighbour"].to_numpy()[case[kind == 1]]
    quota[kind == 2] = counts["fill"].to_numpy()[case[kind == 2]]
    rank = random_rank(case, kind, rng)
    keep = (kind == 0) | (rank < quota)
    chosen = slices.loc[keep, ["case_id", "slice"]]
    roles = np.asarray(ROLES)[kind[keep]]
    return pd.DataFrame({"epoch": np.full(len(chosen), epoch, np.int32), "case_id": chosen["case_id"].to_numpy(),
                         "slice": chosen["slice"].to_numpy(np.int32), "role": roles})


def random_rank(case: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of the slices within each (case, kind) group: 0, 1, 2, ... per group."""
    order = np.lexsort((rng.random(len(case)), kind, case))
    group = case[order].astype(np.int64) * 3 + kind[order]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), np.int64)
    rank[order] = position
    return rank


def patient_report(counts: pd.DataFrame, cfg: PlanConfig) -> pd.DataFrame:
    """Per patient, per epoch: before (all slices) and after (planned) counts, target and achieved ratio."""
    empty_before = counts["neighbour_available"] + counts["far_available"]
    taken = counts["neighbour"] + counts["fill"]
    lesion = counts["lesion"].replace(0, np.nan)
    return pd.DataFrame({
        "case_id": counts["case_id"], "split": counts["split"], "lesion": counts["lesion"],
        "empty_before": empty_before, "ratio_before": empty_before / lesion,
        "neighbour": counts["neighbour"], "fill": counts["fill"], "target_empty": counts["target_empty"],
        "ratio_target": np.nan if cfg.ratio is None else cfg.ratio, "ratio_after": taken / lesion,
        "planned": counts["lesion"] + taken, "reason": counts["reason"],
    })


def summary(plan: Plan) -> pd.DataFrame:
    """Per split and in total, per epoch: patients, lesion / neighbour / fill counts, ratio before and after;
    pseudo-labelled patients apart ("<split> (pseudo)"), those left out below the confidence cut in none."""
    patients, group = summary_groups(plan.patients)
    groups = [(name, rows) for name, rows in patients.groupby(group, sort=True)]
    if len(groups) > 1:
        groups.append(("total", patients))
    records = []
    for name, rows in groups:
        lesion = int(rows["lesion"].sum())
        empty_after = int(rows["neighbour"].sum() + rows["fill"].sum())
        records.append({"split": name, "patients": len(rows), "lesion_free": int((rows["lesion"] == 0).sum()),
                        "lesion": lesion, "neighbour": int(rows["neighbour"].sum()), "fill": int(rows["fill"].sum()),
                        "empty_before": int(rows["empty_before"].sum()),
                        "ratio_before": rows["empty_before"].sum() / lesion if lesion else np.nan,
                        "ratio_after": empty_after / lesion if lesion else np.nan,
                        "unmet": int((rows["reason"].str.startswith("only") |
                                      rows["reason"].str.contains("exceed")).sum())})
    return pd.DataFrame.from_records(records)


def summary_rows(plan: Plan) -> list[tuple]:
    """``summary`` as `ctsample plan` prints it (SUMMARY_HEADERS): ratios to 2 decimals, '-' without lesion slices."""
    rows = [(r.split, r.patients, r.lesion_free, r.lesion, r.neighbour, r.fill, r.empty_before,
             ratio_text(r.ratio_before, "-", 2), ratio_text(r.ratio_after, "-", 2), r.unmet)
            for r in summary(plan).itertuples()]
    if plan.partial is not None:
        p = plan.partial
        rows.append((PARTIAL_ROW, p["patients"], "-", p["lesion"], count_text(p["neighbour"]),
                     count_text(p["fill"]), p["empty_before"], "-", "-", "-"))
    return rows + left_out_rows(plan.patients)


def count_text(count: float) -> str:
    """A per-epoch mean count: '3' when whole, else one decimal ('2.5')."""
    return f"{count:.0f}" if float(count).is_integer() else f"{count:.1f}"


def off_target_rows(plan: Plan) -> list[tuple]:
    """The patients the plan leaves off the target, and why (OFF_TARGET_HEADERS); none when every target is met."""
    unmet = plan.patients[plan.patients["reason"] != ""]
    return [(r.case_id, r.lesion, r.neighbour, r.fill, r.target_empty, r.reason) for r in unmet.itertuples()]


def default_plan_path(store_path: StoreLocation | str, cfg: PlanConfig) -> StoreLocation:
    """STORE/plans/<split>-r<ratio>-k<neighbours>-e<epochs>-s<seed>[-strict][-any|-all][-pseudo[-w<weight>]
    [-c<cut>]].parquet (weight and cut only when not their defaults, 1 and 0)."""
    strict = "-strict" if cfg.strict else ""
    rule = "" if cfg.lesion_by == "consensus" else f"-{cfg.lesion_by}"
    return open_location(store_path) / PLANS_DIR / (f"{cfg.split}-r{cfg.ratio_name}-k{cfg.neighbours}-e{cfg.epochs}"
                                                    f"-s{cfg.seed}{strict}{rule}{pseudo_name(cfg)}.parquet")


def save_plan(plan: Plan, path: StoreLocation) -> StoreLocation:
    """Write the plan's rows as Parquet with its parameters in the file metadata (temp file + rename; one PUT
    for an object-storage key)."""
    table = pa.Table.from_pandas(plan.slices, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           METADATA_KEY: json.dumps(plan.params).encode()})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    write_file(path, buffer.getvalue().to_pybytes())  # temp file + rename, or one PUT
    return path if is_object(path) else Path(path)


def load_plan(path: StoreLocation | str) -> Plan:
    """Read a plan written by save_plan (a file, or an object-storage URL); PlanError for a missing file, one that
    is not a ctstack plan, or rows that break the plan's invariants (planfile.check_rows: integer, in range, known
    roles, no repeats)."""
    path = open_location(path)
    if not path.exists():
        raise PlanNotFoundError(f"{path}: plan file not found; make one with `ctsample plan STORE --out {path}`")
    try:
        table = pq.read_table(pa.BufferReader(path.read_bytes()) if is_object(path) else path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for non-Parquet files
        raise PlanError(f"{path}: not a Parquet file ({err}); make a plan with `ctsample plan`") from err
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    missing = [c for c in PLAN_COLUMNS if c not in table.column_names]
    if raw is None or missing:
        raise PlanError(f"{path}: not a ctstack plan (no plan parameters or columns {missing}); "
                        "make one with `ctsample plan`")
    try:
        params = json.loads(raw)
    except ValueError:
        params = None
    if not isinstance(params, dict):
        raise PlanError(f"{path}: plan parameters are damaged (expected a JSON object, found {raw[:40]!r}); "
                        "make a plan with `ctsample plan`")
    slices = table.to_pandas()
    check_rows(slices, params, str(path))
    slices["case_id"] = slices["case_id"].astype(str)
    return Plan(slices=slices, params=params, patients=pd.DataFrame(columns=REPORT_COLUMNS))
