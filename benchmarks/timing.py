"""Timing helpers shared by the benchmark scripts (imported as a sibling module: scripts run from this folder)."""
from __future__ import annotations

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
