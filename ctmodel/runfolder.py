"""The run folder runs/<name>/: the name of every file in it, its lock, config.json, the plan it trained on,
resume checks and summary.json (checkpoint.py writes the .pt files, curves.py metrics.csv and curves.png)."""
from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctmodel.config import ModelConfig, TrainConfig
from ctprep.atomic import replacing, write_text
from ctprep.clock import NAME_UTC, utc_stamp
from ctprep.errors import PlanError, RunError, RunLockedError
from ctprep.index import index_fingerprint
from ctprep.lock import LOCK_FILE, folder_lock
from ctprep.store import SliceStore
from ctsample.planfile import PLAN_COLUMNS

CONFIG_FILE = "config.json"
PLAN_FILE = "plan.parquet"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILES = {"best": "best.pt", "last": "last.pt"}  # checkpoint name -> file
EVAL_FILE = "eval-{split}.csv"  # `ctmodel evaluate`'s per-case CSV; its summary JSON has the same stem


def default_run_dir(model_name: str, root: Path = Path("runs")) -> Path:
    """runs/<model>-<UTC timestamp>."""
    return root / f"{model_name}-{utc_stamp(NAME_UTC)}"


@contextmanager
def run_lock(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold RUN/.lock for a whole `ctmodel train` (new or resumed); RunLockedError at once when another process
    trains into the same folder. A new run's folder is created here and removed again if nothing was written."""
    run_dir = Path(run_dir)
    if resume:
        read_config(run_dir)  # RunError (no run folder / no config.json) before anything is created
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = RunLockedError(f"{run_dir}: another `ctmodel train` is writing this run folder (its {LOCK_FILE} is "
                          "held); wait for it to finish, or train into another --out")
    try:
        with folder_lock(run_dir, busy):
            yield
    finally:
        if created:
            remove_if_unused(run_dir)


def remove_if_unused(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but its lock file (a new run refused before it wrote anything)."""
    if {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        with suppress(OSError):  # another process wrote into it meanwhile: keep it
            run_dir.rmdir()


def plan_hash(slices: pd.DataFrame) -> str:
    """A short content hash of the plan's rows (epoch, case_id, slice, role)."""
    rows = slices.loc[:, [c for c in PLAN_COLUMNS if c in slices.columns]].astype(str)
    return hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()[:16]


PLAN_RULE = ("ratio", "neighbours", "lesion_free", "lesion_by", "pseudo", "pseudo_weight",
             "min_confidence")  # TrainConfig fields that shape the default plan (pseudo_weight: recorded in it)


def build_plan(index: pd.DataFrame, cfg: TrainConfig, store_path: Path) -> tuple[pd.DataFrame, dict]:
    """A fresh plan through ctsample's API: one random fill per epoch (``ratio`` None: every slice, every epoch);
    PlanError, with a hint that fits `ctmodel train` (which has no --split), when no train patient is labeled."""
    from ctsample.plan import PlanConfig, make_plan

    train_rows = index[(index["split"] == "train") & index["labeled"]]
    if train_rows.empty:
        raise PlanError(f"{store_path}: expected labeled patients in the train split, found none; put some there "
                        f"with `ctsample split {store_path} --test 0.2 --val 0.1`, or add their masks")
    plan = make_plan(index, PlanConfig(ratio=cfg.ratio, neighbours=cfg.neighbours, split="train",
                                       epochs=cfg.epochs, seed=cfg.seed, lesion_free=cfg.lesion_free,
                                       lesion_by=cfg.lesion_by, pseudo=cfg.pseudo, pseudo_weight=cfg.pseudo_weight,
                                       min_confidence=cfg.min_confidence))
    return plan.slices, dict(plan.params)


def with_plan_rule(cfg: TrainConfig, params: dict) -> TrainConfig:
    """``cfg`` with ratio/neighbours/lesion_free (and a --pseudo plan's pseudo options, its weight among them)
    taken from a plan file's parameters (those it records), so that config.json states the rule the run really
    trained on."""
    return replace(cfg, **{name: params[name] for name in PLAN_RULE if name in params})


def read_plan_file(path: Path | str) -> tuple[pd.DataFrame, dict]:
    """A plan written by `ctsample plan`, a file or a URL (through ctsample's loader)."""
    from ctsample.plan import load_plan

    plan = load_plan(path)  # PlanNotFoundError for a missing one
    return plan.slices, dict(plan.params)


def check_plan(slices: pd.DataFrame, params: dict, index: pd.DataFrame, store_path: Path, source: str) -> None:
    """Refuse (one line) a plan of another store, with bad or unknown rows (ctsample.planfile), non-train cases or
    no rows."""
    from ctsample.planfile import check_for_store

    check_for_store(slices, params, index, source, store_path)
    if slices.empty:
        raise PlanError(f"{store_path}: the plan holds no training slices (empty train split or no labeled "
                        "train cases); assign cases to train with `ctprep convert --val/--test`")
    split = index.groupby("case_id")["split"].first()
    leaked = sorted(set(slices.loc[slices["case_id"].astype(str).map(split) != "train", "case_id"].astype(str)))
    if leaked:
        raise PlanError(f"{source}: plan uses non-train cases {leaked[:3]}; plan the train split only")


def unlabeled_policy(slices: pd.DataFrame) -> str:
    """How the resident loader treats unlabeled cases for this plan: "pseudo" when it has pseudo rows, else
    "refuse" (batches.load_resident)."""
    return "pseudo" if "role" in slices and (slices["role"] == "pseudo").any() else "refuse"


def plan_epochs(slices: pd.DataFrame) -> list[pd.DataFrame]:
    """The plan's rows per plan epoch, in epoch order (training epoch e uses entry (e - 1) % len)."""
    return [rows for _epoch, rows in slices.groupby("epoch", sort=True)]


def val_cases(index: pd.DataFrame) -> list[str]:
    """Labeled cases of the val split, sorted."""
    rows = index[(index["split"] == "val") & index["labeled"]]
    return sorted(rows["case_id"].astype(str).unique())


def versions() -> dict:
    """Versions of the libraries that shape a run's numbers."""
    import numcodecs
    import torch
    import zarr

    from ctprep import __version__

    return {"ctstack": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "pandas": pd.__version__,
            "cuda": torch.version.cuda}


def git_commit() -> str | None:
    """The source tree's git commit (with '+dirty' when modified), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write_config(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, store: SliceStore,
                 index: pd.DataFrame, plan: tuple[pd.DataFrame, dict], plan_source: str, parameters: int) -> dict:
    """Create the run folder's config.json and plan.parquet; returns the config dict."""
    slices, params = plan
    run_dir.mkdir(parents=True, exist_ok=True)
    with replacing(run_dir / PLAN_FILE) as tmp:
        slices.loc[:, [c for c in PLAN_COLUMNS if c in slices.columns]].to_parquet(tmp, index=False)
    config = {
        "model": asdict(model_cfg), "train": asdict(train_cfg), "parameters": parameters,
        "store": {"path": str(store.path.resolve()), "layout": store.layout.to_attrs(),
                  "format_version": store.attrs.get("format_version"),
                  "index_fingerprint": index_fingerprint(index, pseudo=params.get("pseudo") is True)},
        "plan": {"source": plan_source, "file": PLAN_FILE, "hash": plan_hash(slices),
                 "params": json.loads(json.dumps(params, default=str)), "rows": int(len(slices))},
        "val_cases": val_cases(index), "versions": versions(), "git_commit": git_commit(),
        "created_utc": utc_stamp(),
    }
    write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2))
    return config


def read_config(run_dir: Path) -> dict:
    """The run's config.json; RunError when the folder or file is missing or not JSON."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no run folder here; pass a folder written by `ctmodel train`")
    path = run_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunError(f"{path}: missing; this folder is not a ctstack run (or training never started)") from err
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err.msg}); the run folder is damaged") from err


def check_new_run_dir(run_dir: Path) -> None:
    """A new run never overwrites another: refuse a folder that already holds a run."""
    if (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")


def resume_configs(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
                   explicit: frozenset[str]) -> tuple[ModelConfig, TrainConfig, dict]:
    """The saved configs of ``run_dir``; RunError when an explicitly given option conflicts with them."""
    config = read_config(run_dir)
    saved_model, saved_train = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    for given, saved in ((model_cfg, saved_model), (train_cfg, saved_train)):
        for name, value in asdict(given).items():
            if name in explicit and value != getattr(saved, name):
                raise RunError(f"{run_dir}: run was started with {name}={getattr(saved, name)!r}, "
                               f"not {value!r}; drop the option to resume or start a new run with --out")
    return saved_model, saved_train, config


def read_run_plan(run_dir: Path) -> pd.DataFrame:
    """The plan a run trains on (saved in the run folder at its start)."""
    path = run_dir / PLAN_FILE
    if not path.exists():
        raise RunError(f"{path}: missing; the run folder is incomplete, start a new run")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError for damaged or foreign files
        raise RunError(f"{path}: damaged (expected the run's Parquet plan, found unreadable bytes); "
                       "start a new run, or restore the file from a backup to resume") from err


def write_summary(run_dir: Path, summary: dict) -> Path:
    """summary.json at the end of a run (read by `ctmodel compare`)."""
    path = run_dir / SUMMARY_FILE
    write_text(path, json.dumps(summary, indent=2))
    return path


def eval_csv(run_dir: Path, split: str) -> Path:
    """RUN/eval-<split>.csv: where `ctmodel evaluate` writes by default (the summary JSON beside it)."""
    return Path(run_dir) / EVAL_FILE.format(split=split)
