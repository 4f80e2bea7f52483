"""Every buildable network configuration (model × block × fusion, unet3d per block) and the `ctmodel train` flags that build each:
what docs/model.md's parameter table, its test and benchmarks/blocks.py enumerate."""
from __future__ import annotations

from ctmodel.config import BLOCKS, FUSIONS, ModelConfig
from ctmodel.nets import build_model, count_parameters


def combinations(width: int = 12) -> list[ModelConfig]:
    """Every buildable configuration: the dual encoder with each fusion, unet2d with each context, unet3d; per
    block."""
    models = ([dict(name="dual-encoder", fusion=f) for f in FUSIONS] + [dict(name="unet2d", context=c) for c in (1, 3)]
              + [dict(name="unet3d")])
    return [ModelConfig(block=block, width=width, **model) for block in BLOCKS for model in models]


def command(cfg: ModelConfig) -> str:
    """The shortest `ctmodel train` line that builds ``cfg`` (options at their default are left out)."""
    names = {"model": "name", "width": "width", "context": "context", "block": "block", "fusion": "fusion",
             "patch-depth": "patch_depth", "patch-size": "patch_size"}
    flags = {flag: getattr(cfg, name) for flag, name in names.items()}
    defaults = {flag: getattr(ModelConfig(), name) for flag, name in names.items()}
    return " ".join(["ctmodel train", *(f"--{k} {v}" for k, v in flags.items() if v != defaults[k])])


def parameter_rows(width: int = 12) -> list[tuple[ModelConfig, int]]:
    """(config, trainable parameters) for every combination."""
    return [(cfg, count_parameters(build_model(cfg))) for cfg in combinations(width)]
