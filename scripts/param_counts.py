"""Print the parameter count of every model x block x fusion at the default width, as docs/model.md's table.

Run: python scripts/param_counts.py [--width 12]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctmodel.config import BLOCKS, FUSIONS, ModelConfig  # noqa: E402
from ctmodel.nets import build_model, count_parameters  # noqa: E402


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


def main() -> None:
    """Print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=12)
    rows = parameter_rows(parser.parse_args().width)
    print("| command | parameters |\n| --- | --- |")
    for cfg, count in rows:
        print(f"| `{command(cfg)}` | {count:,} |")


if __name__ == "__main__":
    main()
