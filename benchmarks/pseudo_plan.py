"""Cost of pseudo-labelled patients in a plan and of the per-sample weighted loss, against today's paths.

Run: PYTHONPATH=. python benchmarks/pseudo_plan.py [--patients 200] [--slices 300] [--epochs 50] [--repeat 5]

Synthetic index as benchmarks/plan.py, with as many unlabeled pseudo-labelled patients again (their pseudo-label
the same kind of lesion runs). Baselines measured in the same run: make_plan and index_fingerprint without
--pseudo, and DiceBCELoss without weights (forward + backward on a (16, 1, 256, 256) batch). Figures are the best
of ``--repeat`` runs. Single process, one core.
"""
from __future__ import annotations

import pandas as pd
import torch

from plan import synthetic_index
from ctprep.index import case_rows, index_fingerprint
from ctmodel.losses import DiceBCELoss
from ctsample.plan import PlanConfig, make_plan
from timing import best_of, int_options


def with_pseudo_patients(index: pd.DataFrame) -> pd.DataFrame:
    """``index`` plus one unlabeled pseudo-labelled copy of every patient (confidence 0.9 per slice)."""
    frames = [index]
    for case_id, case in index.groupby("case_id", sort=True):
        record = {"lesion_pixels": case["lesion_pixels"].tolist(), "confidence": [0.9] * len(case)}
        frames.append(case_rows(f"u{case_id}", len(case), None, "train", pseudo=record))
    return pd.concat(frames, ignore_index=True)


def loss_step(loss: DiceBCELoss, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    """One forward and backward of the loss (weighted when ``weight`` is given)."""
    logits.grad = None
    (loss(logits, target) if weight is None else loss(logits, target, weight)).backward()


def main() -> None:
    args = int_options(__doc__, patients=200, slices=300, epochs=50, repeat=5)
    torch.set_num_threads(1)
    index = with_pseudo_patients(synthetic_index(args.patients, args.slices))
    plain, pseudo = PlanConfig(epochs=args.epochs), PlanConfig(epochs=args.epochs, pseudo=True)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 1, 256, 256, generator=generator).requires_grad_()
    target = (torch.rand(16, 1, 256, 256, generator=generator) > 0.9).float()
    weight = torch.where(torch.arange(16) % 2 == 0, 1.0, 0.5)
    loss = DiceBCELoss()
    figures = {
        "make_plan, labeled only (baseline)": best_of(lambda: make_plan(index, plain), args.repeat)[0],
        "make_plan --pseudo (labeled + pseudo)": best_of(lambda: make_plan(index, pseudo), args.repeat)[0],
        "index_fingerprint (baseline)": best_of(lambda: index_fingerprint(index), args.repeat)[0],
        "index_fingerprint(pseudo=True)": best_of(lambda: index_fingerprint(index, pseudo=True), args.repeat)[0],
        "loss fwd+bwd, no weights (baseline)": best_of(lambda: loss_step(loss, logits, target, None), args.repeat)[0],
        "loss fwd+bwd, per-sample weights": best_of(lambda: loss_step(loss, logits, target, weight), args.repeat)[0],
    }
    rows = make_plan(index, pseudo).slices
    print(f"{len(index):,} index rows ({args.patients} labeled + {args.patients} pseudo-labelled patients), "
          f"{len(rows):,} --pseudo plan rows ({args.epochs} epochs), best of {args.repeat}")
    for name, seconds in figures.items():
        print(f"{name:40s} {seconds * 1e3:8.1f} ms")
    ratio = [figures[b] / figures[a] for a, b in zip(list(figures)[::2], list(figures)[1::2])]
    print(f"--pseudo plan / labeled plan: {ratio[0]:.2f} x; pseudo fingerprint / plain: {ratio[1]:.2f} x; "
          f"weighted loss / plain loss: {ratio[2]:.2f} x")


if __name__ == "__main__":
    main()
