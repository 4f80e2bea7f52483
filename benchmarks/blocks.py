"""Training-step speed of every block x fusion x model against the default dual encoder, measured in one run.

Run: python benchmarks/blocks.py [--size 128] [--batch 4] [--repeats 3] [--device cpu] [--threads 1]

One step = forward, Dice+BCE loss, backward and an AdamW step on a random (batch, 3, size, size) stack at the
default width 12 / depth 4, best of --repeats after one warm-up step. The baseline is the default `ctmodel train`
network (residual blocks, learned fusion), timed in the same run; every row prints its ratio to it.
"""
from __future__ import annotations

import argparse

import torch

from ctmodel.losses import DiceBCELoss
from ctmodel.nets import build_model, count_parameters
from ctmodel.variants import combinations, command
from timing import best_of


def step_seconds(cfg, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    """Best-of time of one training step of ``cfg``'s freshly built network on (x, y)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(x.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DiceBCELoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocations, cuDNN choices
    return best_of(step, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    y = (torch.rand(args.batch, 1, args.size, args.size, generator=generator) > 0.8).float().to(args.device)
    configs = combinations()
    baseline = step_seconds(configs[0], x, y, args.repeats)  # the default: residual blocks, learned fusion
    print(f"{args.device}, {args.threads} thread(s), batch {args.batch} x {args.size}^2, best of {args.repeats}")
    print(f"{'command':<58} {'params':>10} {'ms/step':>9} {'x default':>9}")
    for cfg in configs:
        seconds = baseline if cfg == configs[0] else step_seconds(cfg, x, y, args.repeats)
        print(f"{command(cfg):<58} {count_parameters(build_model(cfg)):>10,} {1e3 * seconds:>9.1f} "
              f"{seconds / baseline:>9.2f}")


if __name__ == "__main__":
    main()
