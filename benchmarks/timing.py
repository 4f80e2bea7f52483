"""Timing helpers shared by the benchmark scripts (imported as a sibling module: scripts run from this folder)."""
from __future__ import annotations

import argparse
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """Fastest of ``repeats`` calls in seconds (shared CPUs: the minimum is the least disturbed), and the last result."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def add_demo_options(parser: argparse.ArgumentParser, cases: int, demo_size: int, slices: int, size: int,
                     slices_flag: str = "--max-slices") -> argparse.ArgumentParser:
    """The options of a benchmark that builds a demo store: patients, source matrix, slice cap, stored size S."""
    parser.add_argument("--cases", type=int, default=cases, help="demo patients")
    parser.add_argument("--demo-size", type=int, default=demo_size, help="in-plane matrix of the demo NIfTI files")
    parser.add_argument(slices_flag, type=int, default=slices, help="cap on slices per demo case")
    parser.add_argument("--size", type=int, default=size, help="stored in-plane size S")
    return parser


def int_options(description: str, **defaults: int) -> argparse.Namespace:
    """Parse ``--name N`` integer options with these defaults (underscores become dashes)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser.parse_args()
