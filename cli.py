"""Command-line entry points: three thin Typer apps (ctprep, ctsample, ctmodel); each command parses,
calls one library function and prints its summary. Library imports are lazy so `--help` stays fast."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ctprep.cli_support import (App, BatchSizeOption, CheckpointOption, Command, DebugOption, DeviceOption,
                                GridOption, RunArgument, SplitChoiceOption, SplitOption, StoreArgument,
                                ToleranceOption, VersionOption, WorkersOption, errors, warn)

prep_app = typer.Typer(cls=App, no_args_is_help=True, help="Convert NIfTI chest CTs into a Zarr slice store.")
sample_app = typer.Typer(cls=App, no_args_is_help=True, help="Splits, imbalance statistics and balanced slice plans.")
model_app = typer.Typer(cls=App, no_args_is_help=True,
                        help="Train, evaluate and predict with 2.5D U-Nets and their 2-D/3-D baselines.")


def _app_options(ctx: typer.Context, debug: DebugOption = False, version: VersionOption = None) -> None:
    """Options every app takes before (or, for --debug, after) its command."""
    ctx.obj = {"debug": debug}


for _app in (prep_app, sample_app, model_app):  # each app needs a callback, or a one-command app eats the name
    _app.callback()(_app_options)


# ---------------------------------------------------------------- ctprep commands


@prep_app.command(cls=Command)
def convert(
    ctx: typer.Context,
    raw: Annotated[Path, typer.Argument(help="Folder of NIfTI images (+ masks): NAME_ct/NAME_seg, imagesTr/labelsTr "
                                             "(imagesTs) or images/ + masks/; or DICOM series folders (a SEG "
                                             "or RTSTRUCT inside, or FOLDER_seg.nii.gz; needs ctstack[dicom]).")],
    store: Annotated[str, typer.Argument(help="Slice store to create or update: a folder (store.zarr) or an "
                                             "object-storage URL (s3://bucket/store.zarr); needs ctstack[cloud].")],
    window: Annotated[str, typer.Option(help="HU window LO,HI mapped to [0, 1].")] = "-1000,400",
    size: Annotated[int, typer.Option(min=8, max=4096, help="Stored in-plane size S (pixels).")] = 256,
    dtype: Annotated[str, typer.Option(help="Stored image dtype: float16 (0..1) or uint8 (0..255).")] = "float16",
    workers: WorkersOption = None,
    test: Annotated[Optional[float], typer.Option(min=0.0, max=0.99, help="Fraction of patients in the test split "
                                                                         "(default 0.2).")] = None,
    val: Annotated[Optional[float], typer.Option(min=0.0, max=0.99, help="Fraction of the other patients in val "
                                                                        "(default 0.1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split hash (default 0).")] = None,
    splits: Annotated[Optional[Path], typer.Option(help="CSV of case_id,split overriding the hash "
                                                        "(official lists).")] = None,
    consensus: Annotated[Optional[str], typer.Option(help="Stored mask of a case with several raters: majority "
                                                          "(marked by at least half), union or intersection "
                                                          "(default: the store's, majority for a new one).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Convert on Dask: local:N (a LocalCluster of N "
                                                          "processes) or tcp://HOST:8786 (a running cluster whose "
                                                          "workers see RAW and STORE); needs "
                                                          "ctstack[distributed].")] = None,
    shard: Annotated[Optional[str], typer.Option(help="i/N (1-based): convert only share i of N of the cases "
                                                      "and skip the index; run `ctprep index STORE` after all "
                                                      "N jobs.")] = None,
    stale_after: Annotated[float, typer.Option(min=0.001, help="Hours after which another run's partial area "
                                                               "counts as abandoned and is cleared.")] = 24.0,
    allow_tilt: Annotated[bool, typer.Option(help="Resample gantry-tilted DICOM series onto an orthogonal grid "
                                                  "(without it such a series fails).")] = False,
) -> None:
    """Convert NIfTI (or DICOM series) cases into a windowed, resized Zarr slice store with index.parquet.

    Re-running skips unchanged cases; without split options the store keeps its split config. Several converts
    (--shard jobs, machines) may write one store at once.

    Example: ctprep convert raw/ store.zarr --size 256 --workers 4
    """
    from ctprep.console import echo, print_problems, print_table
    from ctprep.convert import ConvertConfig, convert as run_convert
    from ctprep.splits import SplitConfig

    with errors(ctx, inputs=(splits,)):
        split = SplitConfig.from_options(test=test, val=val, seed=seed, csv=splits)
        report = run_convert(raw, store, ConvertConfig(window_hu=window, size=size, dtype=dtype, workers=workers,
                                                       split=split, consensus=consensus, scheduler=scheduler,
                                                       shard=shard, stale_after_s=stale_after * 3600,
                                                       allow_tilt=allow_tilt))
    orphans = [f"{path}: mask without an image; ignored" for path in report.orphans]
    print_problems([*orphans, *report.skipped_files, *report.notes], report.failed)
    print_table(f"ctprep convert -> {store}", ["", "value"], report.summary_rows())
    if report.shard is not None:
        echo(f"index not written (shard {report.shard}): run `ctprep index {store}` once every shard has finished")
    if report.failed:
        raise typer.Exit(1)


@prep_app.command(cls=Command)
def index(ctx: typer.Context, store: StoreArgument) -> None:
    """Rebuild index.parquet from the cases in the store: after `convert --shard` jobs, or a convert that died.

    Example: ctprep index store.zarr
    """
    from ctprep.console import print_table
    from ctprep.reindex import index_rows, index_store

    with errors(ctx, stores=(store,)):
        built = index_store(store)
    print_table(f"ctprep index -> {store}", ["", "value"], index_rows(built))


@prep_app.command(cls=Command)
def info(ctx: typer.Context, store: StoreArgument) -> None:
    """Show a store's format, layout, cases, slices, lesion balance, splits and size on disk.

    Example: ctprep info store.zarr
    """
    from ctprep.console import print_table
    from ctprep.info import store_info

    with errors(ctx, stores=(store,)):
        summary = store_info(store)
    print_table(f"{store}", ["", "value"], summary.rows())
    print_table("splits", ["split", "cases", "labeled", "unlabeled", "slices", "lesion slices"], summary.splits)


@prep_app.command(cls=Command)
def verify(
    ctx: typer.Context,
    store: StoreArgument,
    repair: Annotated[Optional[Path], typer.Option(help="Raw folder to re-convert damaged cases from (also "
                                                        "restores a missing root zarr.json).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="With --repair: convert processes.")] = None,
    allow_tilt: Annotated[bool, typer.Option(help="With --repair: as convert's --allow-tilt.")] = False,
) -> None:
    """Check every case's arrays against the index and the checksums recorded at convert time; exit 1 if damaged.

    Example: ctprep verify store.zarr --repair raw/
    """
    from ctprep.errors import UsageError
    from ctprep.verify import print_report, repair as run_repair, verify as run_verify

    with errors(ctx, inputs=(repair,)):
        if allow_tilt and repair is None:
            raise UsageError("--allow-tilt: only used with --repair RAW (re-conversion); drop it or add --repair")
        if repair is None:
            report, fixed = run_verify(store), None
        else:
            fixed = run_repair(store, repair, workers=workers, allow_tilt=allow_tilt)
            report = fixed.after
    print_report(report, fixed)
    if report.damaged or (fixed is not None and fixed.failed):
        raise typer.Exit(1)


@prep_app.command(cls=Command)
def upgrade(ctx: typer.Context, store: StoreArgument) -> None:
    """Upgrade a store of the previous format version in place (format 3 -> 4: empty pseudo-label columns).

    Example: ctprep upgrade store.zarr
    """
    from ctprep.upgrade import upgrade_store

    with errors(ctx, stores=(store,)):
        old, new = upgrade_store(store)
    print(f"{store}: format version {old} -> {new}" if old != new else f"{store}: already format version {new}")


@prep_app.command(cls=Command)
def demo(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(help="New (or empty) folder to write the demo set into.")],
    cases: Annotated[int, typer.Option(min=1, max=10_000, help="Number of patients.")] = 12,
    seed: Annotated[int, typer.Option(min=0, help="Random seed; the same options write byte-identical files.")] = 0,
    layout: Annotated[str, typer.Option(help="covid19 (NAME_ct/NAME_seg) or nnunet (imagesTr/labelsTr, "
                                             "imagesTs unlabeled).")] = "covid19",
    size: Annotated[int, typer.Option(min=32, max=2048, help="In-plane matrix in pixels (scanners: 512).")] = 512,
    max_slices: Annotated[Optional[int], typer.Option(min=4, help="Cap on slices per case for quick runs "
                                                                  "(slices get thicker).")] = None,
    workers: WorkersOption = None,
    difficulty: Annotated[str, typer.Option(help="easy (clear lesions) or realistic (faint, soft-edged, "
                                                 "look-alikes, artefacts, some thick slices).")] = "easy",
    raters: Annotated[int, typer.Option(min=1, max=8, help="Annotators per labeled case: R > 1 writes NAME_seg_r1.."
                                                           "rR (labelsTr/NAME_r1..) that differ like real "
                                                           "radiologists; 1 writes the truth.")] = 1,
    unlabeled: Annotated[int, typer.Option(min=0, max=10_000, help="Extra scans without masks, numbered after "
                                                                   "the labeled ones (no NAME_seg; imagesTr "
                                                                   "without labelsTr).")] = 0,
    format: Annotated[str, typer.Option("--format", help="nifti, or dicom: a series folder per case with a SEG "
                                                         "and real-world quirks (shuffled names, localizer, a "
                                                         "second series; needs ctstack[dicom]).")] = "nifti",
) -> None:
    """Write synthetic chest CTs with lesion masks, stored the way real datasets ship them.

    Int16 (plain HU or scl_inter -1024), some LPS with -3024 HU outside the field of view; 0-6 ground-glass or
    consolidation lesions per patient, about 1.75 empty slices per lesion slice over the set.

    Example: ctprep demo raw/ --cases 12 --layout nnunet   (DICOM: ctprep demo raw/ --format dicom)
    """
    import time

    from ctprep.console import print_table, track
    from ctprep.demo import DemoConfig, iter_demo, summary_rows

    with errors(ctx):
        cfg = DemoConfig(cases=cases, seed=seed, layout=layout, size=size, max_slices=max_slices, workers=workers,
                         difficulty=difficulty, raters=raters, unlabeled=unlabeled, format=format)
        start = time.perf_counter()
        rows = list(track(iter_demo(out_dir, cfg), "demo", total=cfg.total, unit="cases"))
    print_table(f"ctprep demo -> {out_dir}", ["", "value"], summary_rows(rows, time.perf_counter() - start))


# ---------------------------------------------------------------- ctsample commands

@sample_app.command(cls=Command)
def stats(
    ctx: typer.Context,
    store: StoreArgument,
    split: SplitChoiceOption = "all",
    neighbours: Annotated[int, typer.Option(min=0, help="Count empty slices within k of a lesion slice.")] = 1,
    plot: Annotated[Optional[Path], typer.Option(help="Write the per-patient distribution as a PNG.")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Write the per-patient table as CSV.")] = None,
) -> None:
    """Empty vs lesion slices per patient and overall: the imbalance a plan corrects.

    Example: ctsample stats store.zarr --split train --plot stats.png
    """
    from ctprep.console import print_table
    from ctsample.stats import store_stats

    with errors(ctx, stores=(store,)):
        result = store_stats(store, split, neighbours, plot=plot, csv=csv)
    print_table(f"ctsample stats {store} --split {split}: per patient", result.patient_headers(), result.patient_rows())
    print_table("overall", ["", "value"], result.overall_rows())
    if plot is not None:
        print(f"plot: {plot}")


@sample_app.command(cls=Command)
def split(
    ctx: typer.Context,
    store: StoreArgument,
    test: Annotated[float, typer.Option(min=0.0, max=0.99, help="Fraction of patients in the test split.")] = 0.2,
    val: Annotated[float, typer.Option(min=0.0, max=0.99, help="Fraction of the other patients in val.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the (seed, case_id) hash.")] = 0,
    splits: Annotated[Optional[Path], typer.Option(help="CSV of case_id,split[,fold] overriding the hash.")] = None,
    folds: Annotated[Optional[int], typer.Option(min=0, help="K cross-validation folds of the labeled non-test "
                                                             "patients (0 removes them; default: keep the store's K).")]
    = None,
) -> None:
    """Reassign patients to train / val / test (atomically; one patient is never in two splits), and to folds.

    Deterministic from (seed, case_id): adding cases never moves existing ones. Later converts keep the rule.
    Labeled patients alone fill val and test; unlabeled patients (no mask) always go to train.
    With --folds K, labeled train and val patients are also dealt into K folds (`ctmodel train --fold k`).

    Example: ctsample split store.zarr --test 0.2 --val 0.1 --seed 0 --folds 5
    """
    from ctprep.console import print_table
    from ctprep.splits import SplitConfig
    from ctsample.resplit import resplit

    with errors(ctx, inputs=(splits,), stores=(store,)):
        report = resplit(store, SplitConfig(test=test, val=val, seed=seed, csv=splits), folds)
    for line in report.warnings:
        warn(line)
    print_table(f"ctsample split {store}", ["split", "patients before", "patients", "labeled", "unlabeled",
                                            "slices", "lesion slices"], report.rows())
    if fold_rows := report.fold_rows():
        print_table("cross-validation folds (labeled train + val patients)", ["fold", "patients", "slices",
                                                                              "lesion slices"], fold_rows)


@sample_app.command(cls=Command)
def plan(
    ctx: typer.Context,
    store: StoreArgument,
    ratio: Annotated[str, typer.Option(help="Target empty:lesion slices per patient; 0 = lesion slices (+ "
                                            "neighbours); natural = every slice.")] = "1.75",
    neighbours: Annotated[int, typer.Option(min=0, help="Empty slices within k of a lesion slice always taken.")] = 1,
    split: SplitChoiceOption = "train",
    epochs: Annotated[int, typer.Option(min=1, help="Plan epochs; fill drawn afresh in each.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random fill.")] = 0,
    strict: Annotated[bool, typer.Option(help="Sample neighbours down when they alone exceed the ratio.")] = False,
    lesion_free: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of a lesion-free patient's slices "
                                                                      "taken per epoch (0 leaves them out).")] = 0.1,
    lesion_by: Annotated[str, typer.Option(help="Lesion slices: consensus (the stored mask), any (at least one "
                                                "rater marked it) or all (every rater).")] = "consensus",
    pseudo: Annotated[bool, typer.Option("--pseudo", help="Also plan the split's pseudo-labelled patients (`ctmodel "
                                                          "pseudo-label`) by the same rule, role pseudo.")] = False,
    pseudo_weight: Annotated[float, typer.Option(help="With --pseudo: loss weight of pseudo rows, recorded for "
                                                      "`ctmodel train`.")] = 1.0,
    min_confidence: Annotated[float, typer.Option(help="With --pseudo: leave out (and report) pseudo-labelled "
                                                       "patients below this mean confidence.")] = 0.0,
    out: Annotated[Optional[Path], typer.Option(help="Plan file (default: STORE/plans/<rule>.parquet).")] = None,
) -> None:
    """Plan balanced slices: every lesion slice, its empty neighbours, random far empties up to --ratio.

    Example: ctsample plan store.zarr --ratio 1.75 --neighbours 1 --epochs 50
    """
    from ctprep.console import print_table
    from ctsample.plan import (OFF_TARGET_HEADERS, SUMMARY_HEADERS, PlanConfig, off_target_rows, parse_ratio,
                               plan_store, summary_rows)

    with errors(ctx, stores=(store,)):
        cfg = PlanConfig(ratio=parse_ratio(ratio), neighbours=neighbours, split=split, epochs=epochs, seed=seed,
                         strict=strict, lesion_free=lesion_free, lesion_by=lesion_by, pseudo=pseudo,
                         pseudo_weight=pseudo_weight, min_confidence=min_confidence)
        made, path = plan_store(store, cfg, out)
    print_table(f"ctsample plan {store}: per epoch (target empty:lesion {cfg.ratio_name})", SUMMARY_HEADERS,
                summary_rows(made))
    if off_target := off_target_rows(made):
        print_table("patients off the target, and why", OFF_TARGET_HEADERS, off_target)
    print(f"plan: {path} ({len(made.slices):,} rows, {cfg.epochs} epoch(s))")


# ---------------------------------------------------------------- ctmodel commands

@model_app.command(cls=Command)
def train(
    ctx: typer.Context,
    store: Annotated[str, typer.Argument(help="Slice store made by `ctprep convert` (a folder or a URL).")],
    plan: Annotated[Optional[str], typer.Option(help="Plan from `ctsample plan`, a file or a URL (default: build "
                                                     "one, one fresh fill per epoch).")] = None,
    ratio: Annotated[str, typer.Option(help="Without --plan: empty:lesion target ratio, or 'natural' (every "
                                            "slice: the study's regime).")] = "1.75",
    neighbours: Annotated[int, typer.Option(min=0, help="Without --plan: empty neighbours always taken.")] = 1,
    lesion_free: Annotated[float, typer.Option(help="Without --plan: fraction (0..1) of a lesion-free patient's "
                                                    "slices per epoch.")] = 0.1,
    lesion_by: Annotated[str, typer.Option(help="Without --plan: lesion slices by consensus, any rater or all "
                                                "raters (as ctsample plan).")] = "consensus",
    pseudo: Annotated[bool, typer.Option("--pseudo", help="Without --plan: also train on the train split's "
                                                          "pseudo-labelled patients (as ctsample plan --pseudo).")]
    = False,
    pseudo_weight: Annotated[float, typer.Option(help="Without --plan: loss weight of pseudo rows (1: like "
                                                      "labeled rows).")] = 1.0,
    min_confidence: Annotated[float, typer.Option(help="Without --plan: leave out pseudo-labelled patients below "
                                                       "this mean confidence.")] = 0.0,
    target: Annotated[str, typer.Option(help="Training target: consensus (the stored mask), union, intersection, "
                                             "soft (rater mean), random-rater, or ugs (UGS-Net heads).")] = "consensus",
    model: Annotated[str, typer.Option(help="dual-encoder (the study's model), unet2d (its baseline) or unet3d "
                                            "(3-D patches, sliding-window inference).")] = "dual-encoder",
    width: Annotated[int, typer.Option(help="Channels of the first level (12 -> ~1.5 M parameters).")] = 12,
    depth: Annotated[int, typer.Option(help="Downsamplings (levels - 1); inputs padded to a multiple of 2**depth.")]
    = 4,
    context: Annotated[int, typer.Option(help="unet2d input: 1 = centre slice, 3 = z-1, z, z+1 stack.")] = 1,
    block: Annotated[str, typer.Option(help="Conv block of every level: residual, or idc (Inception depthwise, "
                                            "InceptionNeXt).")] = "residual",
    fusion: Annotated[str, typer.Option(help="Dual encoder: learned (gated residual, every level), fixed (0.5/0.5), "
                                             "concat (1x1 conv) or bottleneck (learned, deepest level only).")]
    = "learned",
    patch_depth: Annotated[int, typer.Option(help="unet3d: slices per training patch and inference window.")] = 32,
    patch_size: Annotated[int, typer.Option(help="unet3d: in-plane patch side (the store size when smaller).")]
    = 128,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (micro-batch); under torchrun the "
                                                 "global batch, split over the processes.")] = 16,
    accumulate: Annotated[int, typer.Option(help="Micro-batches per optimizer step (effective batch "
                                                        "accumulate x batch-size; the study: batch 1).")] = 1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    step_size: Annotated[int, typer.Option(help="StepLR: epochs between learning-rate drops.")] = 20,
    gamma: Annotated[float, typer.Option(help="StepLR: factor of each drop.")] = 0.1,
    dice_weight: Annotated[float, typer.Option(help="Weight of the soft Dice loss.")] = 0.7,
    bce_weight: Annotated[float, typer.Option(help="Weight of the BCE loss.")] = 0.3,
    augment: Annotated[bool, typer.Option(help="Flips, small rotation/scale, intensity jitter on the device "
                                               "(--no-augment reproduces the study).")] = True,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="bf16 autocast on CUDA, or fp32 (CPU always fp32).")] = "bf16",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="channels_last on CUDA (measure first: "
                                                                       "InstanceNorm may be slower).")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Bitwise repeatable on one device "
                                                                       "(slower kernels).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of weights, plan, shuffling and augmentation.")] = 0,
    resident: Annotated[str, typer.Option(help="Where the data lives: auto, device (GPU), host, or stream (each "
                                               "plan epoch's rows read from the store one epoch ahead; auto "
                                               "streams when the data does not fit).")] = "auto",
    memory_budget: Annotated[Optional[str], typer.Option(help="Cap on what the loader holds, e.g. 2GiB, 512MiB or "
                                                              "bytes, per process (default: 50 % of free GPU / "
                                                              "80 % of available host memory, split over a node's "
                                                              "torchrun processes).")] = None,
    fold: Annotated[Optional[int], typer.Option(min=0, help="Cross-validation: validate on fold k of `ctsample "
                                                            "split --folds`, train on the other folds.")] = None,
    semi: Annotated[str, typer.Option(help="Learn from the train split's unlabeled cases too: none, or mean-teacher "
                                           "(EMA teacher, consistency loss; docs/semi-supervised.md).")] = "none",
    ema: Annotated[float, typer.Option(help="Mean teacher: EMA decay of the teacher's weights.")] = 0.99,
    consistency: Annotated[float, typer.Option(help="Mean teacher: weight of the consistency loss after the "
                                                    "ramp-up.")] = 1.0,
    rampup: Annotated[int, typer.Option(help="Mean teacher: epochs of the sigmoid ramp-up of the consistency "
                                             "weight (0: none).")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/MODEL-TIMESTAMP).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the killed run in --out from last.pt.")]
    = False,
) -> None:
    """Train a dual-encoder 2.5D U-Net (or the unet2d / unet3d baselines) from a store; writes a run folder.

    Example: ctmodel train store.zarr --epochs 50 --out runs/dual
    (several GPUs: torchrun --standalone --nproc-per-node 4 $(which ctmodel) train ...; docs/scaling.md;
    5-fold cross-validation: ctsample split store.zarr --folds 5, then --fold 0 .. --fold 4;
    the study's regime: --ratio natural --batch-size 1 --accumulate N --no-augment; see docs/results.md)
    """
    import os

    from ctmodel.config import configs_from_options
    from ctmodel.distributed import DistEnv
    from ctmodel.train import train as run_train
    from ctprep.console import print_files, print_table
    from ctsample.plan import parse_ratio

    given = [name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE"]
    with errors(ctx, inputs=(plan,), stores=(store,)):
        dist = DistEnv.from_environ(os.environ)  # torchrun's RANK / WORLD_SIZE / LOCAL_RANK (docs/scaling.md)
        model_cfg, train_cfg, explicit = configs_from_options({**ctx.params, "ratio": parse_ratio(ratio)}, given)
        result = run_train(store, model_cfg, train_cfg, out=out, plan_path=plan, resume=resume, explicit=explicit,
                           dist=dist)
    if not dist.is_main:
        return
    print_table(f"ctmodel train -> {result.run_dir}", ["", "value"], result.summary_rows())
    print_files(result.files())


@model_app.command(cls=Command)
def evaluate(
    ctx: typer.Context,
    run: RunArgument,
    store: Annotated[str, typer.Argument(help="Slice store with the run's layout (window, size, dtype); a folder "
                                             "or a URL.")],
    split: SplitOption = "test",
    checkpoint: CheckpointOption = "best",
    tolerance: ToleranceOption = 1.0,
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Per-case CSV (default RUN/eval-SPLIT.csv); "
                                                     "the summary JSON goes beside it.")] = None,
    figures: Annotated[Optional[Path], typer.Option(help="Folder for overlay PNGs of the best, median and "
                                                         "worst cases.")] = None,
    grid: GridOption = "native",
    calibration: Annotated[bool, typer.Option("--calibration", help="Expected calibration error against the "
                                              "rater fraction and a reliability PNG beside the CSV (always for "
                                              "runs trained with --target soft or ugs).")] = False,
) -> None:
    """Evaluate a run on every labeled case of a split: 3-D Dice, IoU, NSD, HD95, volumes, slice-level means.

    3-D scores are on the source files' grid unless --grid store; a case whose source mask is missing or changed
    falls back to the store grid with a warning. Cases with several raters are also scored against each rater,
    with the inter-rater ceiling (docs/raters.md).

    Example: ctmodel evaluate runs/dual store.zarr --split test --figures figs/
    """
    from ctmodel.evaluate import EvaluateConfig, evaluate as run_evaluate, summary_rows
    from ctprep.console import print_files, print_table

    with errors(ctx, inputs=(run,), stores=(store,)):
        cfg = EvaluateConfig(split=split, checkpoint=checkpoint, tolerance_mm=tolerance, device=device,
                             batch_size=batch_size, grid=grid, calibration=calibration)
        result = run_evaluate(run, store, cfg, out=out, figures=figures)
    for line in result.warnings:
        warn(line)
    print_table(f"ctmodel evaluate {run} on {split} ({result.summary['cases']} cases)",
                ["metric", "mean ± sd", "median"], summary_rows(result.summary))
    print_files([("per-case CSV", result.csv_path), ("summary JSON", result.json_path),
                 *(("figure", path) for path in result.figures),
                 *((("reliability diagram", result.reliability_png),) if result.reliability_png else ())])


@model_app.command(cls=Command)
def compare(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(metavar="RUN... STORE",
                                                help="Run folders, then the store: RUN_A RUN_B ... STORE.")],
    split: SplitOption = "test",
    checkpoint: CheckpointOption = "best",
    tolerance: ToleranceOption = 1.0,
    device: DeviceOption = "auto",
    grid: GridOption = "native",
    out: Annotated[Optional[Path], typer.Option(help="Write the statistics to OUT.md and OUT.csv.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Folder for a box/strip PNG per metric.")] = None,
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples of the paired differences.")] = 10_000,
    stats_seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Compare runs side by side (the study's Tables 5.1/5.2), re-using matching evaluations.

    Runs with the same configuration (folds or seeds) are grouped: mean ± sd over runs, and per-case paired
    differences between configurations (Wilcoxon p, bootstrap 95 % CI), shown when a configuration has several
    runs or --out/--plot is given.

    Example: ctmodel compare runs/dual-f* runs/unet-f* store.zarr --split test --out cv --plot figs/
    """
    from ctmodel.compare import compare_report
    from ctmodel.compare_stats import StatsConfig
    from ctmodel.evaluate import EvaluateConfig
    from ctprep.console import print_files, print_table

    runs = [Path(path) for path in paths[:-1]]
    with errors(ctx, inputs=tuple(runs), stores=tuple(paths[-1:])):
        cfg = EvaluateConfig(split=split, checkpoint=checkpoint, tolerance_mm=tolerance, device=device, grid=grid)
        report = compare_report(runs, paths[-1], cfg, StatsConfig(resamples=resamples, seed=stats_seed),
                                out, plot)
    for table in report.tables():
        print_table(*table)
    print_files(("file", path) for path in report.files)


@model_app.command(cls=Command)
def predict(
    ctx: typer.Context,
    run: RunArgument,
    input: Annotated[Path, typer.Argument(help="A .nii/.nii.gz scan, a DICOM series folder, or a folder of them "
                                               "(NAME_0000 -> NAME).")],
    output: Annotated[Path, typer.Argument(help="Output file (.nii/.nii.gz, or .dcm for dicom-seg), or a folder.")],
    checkpoint: CheckpointOption = "best",
    device: DeviceOption = "auto",
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold of the mask.")] = 0.5,
    probabilities: Annotated[bool, typer.Option(help="Write float32 probabilities (dicom-seg: a FRACTIONAL SEG) "
                                                     "instead of a mask.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="nifti, or dicom-seg: a DICOM SEG referencing each "
                                                                "DICOM series.")] = "nifti",
    allow_tilt: Annotated[bool, typer.Option(help="DICOM input: resample gantry-tilted series (a SEG maps back onto "
                                                  "their slices).")] = False,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="--target ugs runs: also write NAME_uncertainty "
                                              "(float32 p_union - p_intersection) beside the mask.")] = False,
    batch_size: BatchSizeOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files (an input is never "
                                                                "overwritten).")] = False,
) -> None:
    """Predict lesion masks for NIfTI scans or DICOM series, on each source's own grid and orientation.

    Example: ctmodel predict runs/dual imagesTs/ predictions/   (DICOM: --format dicom-seg)
    """
    from ctmodel.predict import PredictConfig, predict as run_predict
    from ctprep.console import print_problems, print_table

    with errors(ctx, inputs=(run, input)):
        cfg = PredictConfig(checkpoint=checkpoint, device=device, threshold=threshold,
                            probabilities=probabilities, batch_size=batch_size, overwrite=overwrite,
                            uncertainty=uncertainty, format=output_format, allow_tilt=allow_tilt)
        report = run_predict(run, input, output, cfg)
    print_problems(failed=report.failed)
    if report.results:
        print_table("scans", ["output", "slices", "seconds", "lesion mL"], report.rows())
    print_table(f"ctmodel predict -> {output}", ["", "value"], report.summary_rows())
    if report.failed:
        raise typer.Exit(1)


@model_app.command(cls=Command)
def pseudo_label(
    ctx: typer.Context,
    run: RunArgument,
    store: Annotated[str, typer.Argument(help="Slice store with the run's layout; its unlabeled train cases get "
                                               "pseudo-labels.")],
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold of the pseudo mask.")]
    = 0.5,
    min_confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Leave out (and strip) cases whose mean "
                                                                         "slice confidence is below it.")] = 0.0,
    cases: Annotated[str, typer.Option(help="unlabeled (those not yet done by this checkpoint and threshold) or "
                                            "all-unlabeled-in-split (every unlabeled train case, afresh).")]
    = "unlabeled",
    checkpoint: CheckpointOption = "best",
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = None,
) -> None:
    """Pseudo-label a store's unlabeled train cases with a run's predictions (mask, per-slice confidence, record).

    Val and test cases are never pseudo-labelled; a re-run with another run replaces the labels atomically.

    Example: ctmodel pseudo-label runs/dual store.zarr --min-confidence 0.9
    """
    from ctmodel.pseudolabel import PseudoLabelConfig, pseudo_label as run_pseudo_label
    from ctprep.console import print_table

    with errors(ctx, inputs=(run,), stores=(store,)):
        cfg = PseudoLabelConfig(threshold=threshold, min_confidence=min_confidence, cases=cases,
                                checkpoint=checkpoint, device=device, batch_size=batch_size)
        report = run_pseudo_label(run, store, cfg)
    if left_out := report.left_out_rows():
        print_table(f"left out (confidence < {min_confidence})", ["case", "confidence"], left_out)
    print_table(f"ctmodel pseudo-label {run} -> {store}", ["", "value"], report.summary_rows())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(prep_app())
