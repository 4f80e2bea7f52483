"""Frozen, validated configuration of the networks (ModelConfig) and of a training run (TrainConfig)."""
from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, fields

from ctprep.errors import UsageError

MODELS = ("dual-encoder", "unet2d", "unet3d")
BLOCKS = ("residual", "idc")  # the conv block of every level (docs/model.md, "Blocks")
FUSIONS = ("learned", "fixed", "concat", "bottleneck")  # dual encoder only (docs/model.md, "Fusion variants")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("bf16", "fp32")
RESIDENCY = ("auto", "device", "host", "stream")  # "stream": per plan epoch from the store (ctmodel/stream.py)
BYTE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
              "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}  # --memory-budget suffixes (case-insensitive)
TARGETS = ("consensus", "union", "intersection", "soft", "random-rater", "ugs")  # docs/raters.md, "Training targets"
HEADS = ("consensus", "ugs")  # output heads: the one consensus logit, or UGS-Net's (consensus, intersection, union)
LESION_BY = ("consensus", "any", "all")  # as ctsample.plan.LESION_BY (ctmodel does not import ctsample at load)
SEMI = ("none", "mean-teacher")  # learning from the unlabeled train cases (docs/semi-supervised.md)
SEMI_OPTIONS = ("ema", "consistency", "rampup")  # TrainConfig fields only --semi mean-teacher uses


def check_positive(name: str, value: float) -> None:
    """Raise a one-line UsageError unless ``value`` > 0."""
    if not value > 0:
        raise UsageError(f"--{name.replace('_', '-')} {value}: expected a value above 0")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a one-line UsageError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UsageError(f"--{name.replace('_', '-')} {value}: expected one of {', '.join(choices)}")


def check_ratio(ratio: float | None) -> None:
    """Raise a one-line UsageError unless ``ratio`` is None (natural) or a finite number >= 0 (as ctsample plan)."""
    if ratio is not None and not (math.isfinite(ratio) and ratio >= 0):
        raise UsageError(f"--ratio {ratio}: expected a number >= 0 (e.g. 1.75) or 'natural'")


def parse_bytes(text: str | int) -> int:
    """'2GiB', '512MiB', '1.5GB', '300000' (bytes) or an int -> bytes (> 0); a one-line UsageError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        number, unit = float(text), ""
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        number, unit = (float(found[1]), found[2].lower()) if found else (math.nan, "")
    if not (math.isfinite(number) and unit in BYTE_UNITS and number * BYTE_UNITS[unit] >= 1):
        raise UsageError(f"--memory-budget {text}: expected a size such as 2GiB, 512MiB, 1.5GB or a number of bytes "
                         "(at least 1)")
    return int(number * BYTE_UNITS[unit])


def check_inference(checkpoint: str, threshold: float, batch_size: int | None) -> None:
    """The options evaluate and predict share: which checkpoint, the probability threshold, slices per pass."""
    if checkpoint not in ("best", "last"):
        raise UsageError(f"--checkpoint {checkpoint}: expected best or last")
    if not 0.0 < threshold < 1.0:
        raise UsageError(f"--threshold {threshold}: expected a probability between 0 and 1 (exclusive)")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected 1 or more slices")


@dataclass(frozen=True)
class ModelConfig:
    """Which network and how wide; the architecture stored with every checkpoint."""

    name: str = "dual-encoder"  # the source study's model; "unet2d" and "unet3d" are its comparison's baselines
    width: int = 12  # channels of the first level: 12, 24, 48, 96, 96 -> 1.48 M params (the study: ~1.6 M)
    depth: int = 4  # downsamplings (2**4 = 16x); inputs are padded to a multiple of 2**depth
    context: int = 1  # unet2d only: 1 = centre slice, 3 = the z-1, z, z+1 stack as channels
    block: str = "residual"  # the conv block of every level; "idc" = InceptionNeXt's Inception depthwise block
    fusion: str = "learned"  # dual encoder: the gated-residual FusionBlock at every level (the project's design)
    patch_depth: int = 32  # unet3d only: slices per training patch and inference window
    patch_size: int = 128  # unet3d only: in-plane patch/window side, min(patch_size, store size) is used
    heads: str = "consensus"  # "ugs": two more 1x1 heads (intersection, union); set by `--target ugs`

    def __post_init__(self) -> None:
        check_choice("model", self.name, MODELS)
        check_choice("heads", self.heads, HEADS)
        check_positive("width", self.width)
        if not 1 <= self.depth <= 6:
            raise UsageError(f"--depth {self.depth}: expected 1..6 downsamplings")
        if self.context not in (1, 3):
            raise UsageError(f"--context {self.context}: expected 1 (centre slice) or 3 (slice stack)")
        check_choice("block", self.block, BLOCKS)
        check_choice("fusion", self.fusion, FUSIONS)
        if self.block == "idc" and self.width < 3:
            raise UsageError(f"--block idc --width {self.width}: expected a width of 3 or more (the Inception "
                             "depthwise conv needs one channel per branch); raise --width")
        if self.fusion != "learned" and self.name != "dual-encoder":
            raise UsageError(f"--fusion {self.fusion}: expected --model dual-encoder (the only model that fuses); "
                             "drop --fusion")
        self._check_unet3d()

    def _check_unet3d(self) -> None:
        """The options only unet3d has, and the ones it refuses."""
        check_positive("patch_depth", self.patch_depth)
        check_positive("patch_size", self.patch_size)
        if self.name != "unet3d":
            default = ModelConfig.__dataclass_fields__
            for name in ("patch_depth", "patch_size"):
                if getattr(self, name) != default[name].default:
                    raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected --model unet3d "
                                     "(the only model trained on patches); drop it")
            return
        if self.context != 1:
            raise UsageError(f"--context {self.context}: expected --model unet2d (unet3d sees whole 3-D patches, "
                             "not slice stacks); drop --context")
        if self.block == "idc" and self.width < 4:
            raise UsageError(f"--model unet3d --block idc --width {self.width}: expected a width of 4 or more (the "
                             "3-D Inception depthwise conv needs one channel per branch); raise --width")

    @property
    def volumetric(self) -> bool:
        """Whether the network takes 3-D patches (unet3d) rather than slice stacks."""
        return self.name == "unet3d"

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Rebuild from ``asdict`` output (ignores unknown keys from newer versions)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run; defaults follow design.md, "Training" (docs/model.md marks which are the
    study's and which are the project's)."""

    epochs: int = 50  # the study trained 50 epochs
    batch_size: int = 16  # the project's choice: the study trained at batch 1 (see accumulate)
    accumulate: int = 1  # micro-batches of batch_size per optimizer step (the study: batch 1 with accumulation)
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-4
    step_size: int = 20  # StepLR: x gamma every step_size epochs
    gamma: float = 0.1
    dice_weight: float = 0.7  # loss = 0.7 Dice + 0.3 BCE
    bce_weight: float = 0.3
    ratio: float | None = 1.75  # plan built when no --plan: empty:lesion target; None = natural (every slice,
    # the study's regime); 1.75 (the study's data's natural imbalance) is the project's balanced default
    neighbours: int = 1  # plan: empty slices within k of a lesion slice always taken
    lesion_free: float = 0.1  # plan: share of a lesion-free patient's slices per epoch (ctsample's default)
    augment: bool = True  # flips, small rotation/scale, intensity jitter on the device; off = the study exactly
    device: str = "auto"
    precision: str = "bf16"  # bf16 autocast on CUDA; CPU always runs fp32
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # off: InstanceNorm falls back to NCHW kernels, measure before enabling
    deterministic: bool = False  # bitwise repeatable on one device (slower kernels)
    seed: int = 0
    val_batch_size: int | None = None  # slices per forward pass when validating (None: 32 GPU, 4 CPU)
    resident: str = "auto"  # where the data lives: "device" when it fits, else pinned "host", else "stream"
    memory_budget: str | None = None  # cap on what the loader holds, e.g. "2GiB" (None: shares of free memory)
    fold: int | None = None  # cross-validation: validate on this fold, train on the others (None: the val split)
    lesion_by: str = "consensus"  # plan: lesion slices by the consensus, any rater or all raters
    target: str = "consensus"  # what the network learns: the stored mask, or one of TARGETS built from the raters
    semi: str = "none"  # "mean-teacher": an EMA teacher on the unlabeled train cases (docs/semi-supervised.md)
    ema: float = 0.99  # mean teacher: the teacher's EMA decay (Tarvainen & Valpola's and UA-MT's 0.99)
    consistency: float = 1.0  # mean teacher: weight of the consistency loss after the ramp-up
    rampup: int = 5  # mean teacher: epochs of the sigmoid ramp-up exp(-5 (1 - t)^2) (0: full weight at once)
    pseudo: bool = False  # plan: also the train split's pseudo-labelled patients (ctsample plan --pseudo)
    pseudo_weight: float = 1.0  # loss weight of pseudo rows (1: exactly the labeled loss path, no weighting code)
    min_confidence: float = 0.0  # plan: pseudo-labelled patients below this mean confidence are left out

    def __post_init__(self) -> None:
        if self.fold is not None and self.fold < 0:
            raise UsageError(f"--fold {self.fold}: expected a fold number 0..K-1")
        for name in ("epochs", "batch_size", "accumulate", "lr", "step_size", "gamma"):
            check_positive(name, getattr(self, name))
        check_ratio(self.ratio)
        if not 0.0 <= self.lesion_free <= 1.0:
            raise UsageError(f"--lesion-free {self.lesion_free}: expected a fraction in [0, 1]")
        if self.val_batch_size is not None:
            check_positive("val_batch_size", self.val_batch_size)
        for name in ("weight_decay", "dice_weight", "bce_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected a value >= 0")
        if self.dice_weight + self.bce_weight <= 0:
            raise UsageError("--dice-weight and --bce-weight are both 0: the loss would be constant; set one above 0")
        if self.neighbours < 0:
            raise UsageError(f"--neighbours {self.neighbours}: expected 0 or more slices")
        check_choice("device", self.device.split(":")[0], DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("resident", self.resident, RESIDENCY)
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget)
        check_choice("lesion_by", self.lesion_by, LESION_BY)
        check_choice("target", self.target, TARGETS)
        self._check_semi()
        self._check_pseudo()

    @property
    def budget_bytes(self) -> int | None:
        """--memory-budget in bytes, or None for the default shares of free memory."""
        return None if self.memory_budget is None else parse_bytes(self.memory_budget)

    def _check_semi(self) -> None:
        """--semi and the options only the mean teacher has (refused, like unet3d's, without it)."""
        check_choice("semi", self.semi, SEMI)
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema {self.ema}: expected a decay in [0, 1) (e.g. 0.99)")
        if not (math.isfinite(self.consistency) and self.consistency >= 0):
            raise UsageError(f"--consistency {self.consistency}: expected a weight >= 0")
        if self.rampup < 0:
            raise UsageError(f"--rampup {self.rampup}: expected 0 or more epochs")
        if self.semi == "none":
            default = TrainConfig.__dataclass_fields__
            for name in SEMI_OPTIONS:
                if getattr(self, name) != default[name].default:
                    raise UsageError(f"--{name} {getattr(self, name)}: expected --semi mean-teacher (the only "
                                     "mode with a teacher); add it or drop the option")

    def _check_pseudo(self) -> None:
        """--pseudo and the options only a pseudo plan has."""
        from ctsample.pseudo import check_pseudo_options  # light (numpy, pandas); ctsample is not imported at load

        check_pseudo_options(self.pseudo, self.pseudo_weight, self.min_confidence, alone=True)  # build_plan refuses
        if self.pseudo and self.target != "consensus":
            raise UsageError(f"--pseudo --target {self.target}: a pseudo-label is one mask without raters (expected "
                             "--target consensus); drop --target or --pseudo")
        if self.pseudo and self.semi != "none":
            raise UsageError(f"--pseudo --semi {self.semi}: the mean teacher uses the unlabeled cases without their "
                             "pseudo-labels; train one or the other (drop --semi or --pseudo)")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from ``asdict`` output (ignores unknown keys from newer versions)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


OPTION_FIELDS = {"model": "name"}  # the one `ctmodel train` option named unlike its config field


def configs_from_options(options: dict, given: Collection[str] = ()) -> tuple[ModelConfig, TrainConfig,
                                                                              frozenset[str]]:
    """ModelConfig and TrainConfig from `ctmodel train`'s options (other names ignored), and the config fields that
    the ``given`` options (those typed on the command line) set: --resume refuses those that differ from the run's."""
    by_field = {OPTION_FIELDS.get(name, name): value for name, value in options.items()}
    model_fields = {f.name for f in fields(ModelConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    train = TrainConfig(**{k: v for k, v in by_field.items() if k in train_fields})
    heads = "ugs" if train.target == "ugs" else "consensus"  # the architecture follows the target
    model = ModelConfig(**{k: v for k, v in by_field.items() if k in model_fields}, heads=heads)
    explicit = frozenset(OPTION_FIELDS.get(name, name) for name in given) & (model_fields | train_fields)
    return model, train, explicit
