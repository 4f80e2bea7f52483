"""Demo raters (`ctprep demo --raters R`): inter-rater Dice per lesion, and the cost of drawing the raters.

Run: PYTHONPATH=. python benchmarks/demo_raters.py [--cases 12] [--size 512] [--raters 4] [--difficulty easy]

(d)  per lesion (3-D component of the truth): the raters' mean pairwise Dice in the lesion's box (mean, median,
     10-90 % range); the target is LIDC's 0.7-0.85;
(r)  baseline: rendering the same cases (make_phantom), seconds;
(m)  drawing the R rater masks of those cases (rater_masks), seconds, and its ratio to (r).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ctprep.demo.phantom import make_phantom
from ctprep.demo.raters import lesion_dice, rater_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--raters", type=int, default=4)
    parser.add_argument("--max-slices", type=int, default=None)
    parser.add_argument("--difficulty", default="easy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dice, render, raters = [], 0.0, 0.0
    for index in range(args.cases):
        start = time.perf_counter()
        phantom = make_phantom(args.seed, index, args.size, args.max_slices, args.difficulty)
        middle = time.perf_counter()
        masks = rater_masks(phantom, args.raters, args.seed, index)
        raters += time.perf_counter() - middle
        render += middle - start
        dice += lesion_dice(phantom.mask, masks)
    found = np.asarray(dice)
    print(f"{args.cases} cases, {args.size}^2, {args.raters} raters, {args.difficulty}: {found.size} lesions")
    if found.size:
        print(f"(d) inter-rater Dice per lesion: mean {found.mean():.3f}, median {np.median(found):.3f}, "
              f"10-90 % {np.quantile(found, 0.1):.2f}-{np.quantile(found, 0.9):.2f}")
    print(f"(r) rendering (baseline): {render:.2f} s")
    print(f"(m) rater masks: {raters:.2f} s ({raters / render:.2f}x rendering)")


if __name__ == "__main__":
    main()
