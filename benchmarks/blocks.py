"""Training-step speed of every block x fusion x model against the default dual encoder, measured in one run.

Run: python benchmarks/blocks.py [--size 128] [--batch 4] [--repeats 3] [--device cpu] [--threads 1] [--patch-depth 8]

One step = forward, Dice+BCE loss, backward and an AdamW step on a random (batch, 3, size, size) stack at the
default width 12 / depth 4, best of --repeats after one warm-up step; unet3d steps on (batch, 1, patch-depth, size,
size) patches, so it also prints ms per output slice (step / (batch x patch-depth), against step / batch for the
2.5D rows). The baseline is the default `ctmodel train` network (residual blocks, learned fusion), timed in the
same run; every row prints its ratio to it.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

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
    parser.add_argument("--patch-depth", type=int, default=8, help="unet3d patch depth (slices)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(args.device)
    y = (torch.rand(args.batch, 1, args.size, args.size, generator=generator) > 0.8).float().to(args.device)
    patch = (args.batch, 1, args.patch_depth, args.size, args.size)
    x3, y3 = torch.rand(patch, generator=generator).to(args.device), (torch.rand(patch, generator=generator) > 0.8)
    y3 = y3.float().to(args.device)
    configs = [replace(c, patch_depth=args.patch_depth) if c.volumetric else c for c in combinations()]
    baseline = step_seconds(configs[0], x, y, args.repeats)  # the default: residual blocks, learned fusion
    print(f"{args.device}, {args.threads} thread(s), batch {args.batch} x {args.size}^2 (unet3d: x {args.patch_depth} "
          f"slices), best of {args.repeats}")
    print(f"{'command':<58} {'params':>10} {'ms/step':>9} {'x default':>9} {'ms/slice':>9}")
    for cfg in configs:
        inputs, slices = ((x3, y3), args.batch * args.patch_depth) if cfg.volumetric else ((x, y), args.batch)
        seconds = baseline if cfg == configs[0] else step_seconds(cfg, *inputs, args.repeats)
        print(f"{command(cfg):<58} {count_parameters(build_model(cfg)):>10,} {1e3 * seconds:>9.1f} "
              f"{seconds / baseline:>9.2f} {1e3 * seconds / slices:>9.1f}")


if __name__ == "__main__":
    main()
