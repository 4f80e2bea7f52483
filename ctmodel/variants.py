"""Every buildable network configuration (model × block × fusion) and the `ctmodel train` flags that build each:
what docs/model.md's parameter table, its test and benchmarks/blocks.py enumerate."""
from __future__ import annotations

from ctmodel.config import BLOCKS, FUSIONS, ModelConfig
from ctmodel.nets import build_model, count_parameters


def combinations(width: int = 12) -> list[ModelConfig]:
    """Every buildable configuration: the dual encoder with each fusion, unet2d with each context, per block."""
    models = [dict(name="dual-encoder", fusion=f) for f in FUSIONS] + [dict(name="unet2d", context=c) for c in (1, 3)]
    return [ModelConfig(block=block, width=width, **model) for block in BLOCKS for model in models]


def command(cfg: ModelConfig) -> str:
    """The shortest `ctmodel train` line that builds ``cfg`` (options at their default are left out)."""
    default = ModelConfig()
    flags = {"model": cfg.name, "width": cfg.width, "context": cfg.context, "block": cfg.block, "fusion": cfg.fusion}
    defaults = {"model": default.name, "width": default.width, "context": default.context, "block": default.block,
                "fusion": default.fusion}
    return " ".join(["ctmodel train", *(f"--{k} {v}" for k, v in flags.items() if v != defaults[k])])


def parameter_rows(width: int = 12) -> list[tuple[ModelConfig, int]]:
    """(config, trainable parameters) for every combination."""
    return [(cfg, count_parameters(build_model(cfg))) for cfg in combinations(width)]
