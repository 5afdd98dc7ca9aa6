"""Small timing helpers shared by the benchmarks: medians of repeated runs, printed as ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_of(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeat))


def report(title: str, measured: float, baseline: float, target: float, *, baseline_name: str) -> str:
    ratio = measured / baseline if baseline else float("inf")
    verdict = "meets" if ratio <= target else "MISSES"
    return (
        f"{title}: {measured * 1000:.1f} ms vs {baseline_name} {baseline * 1000:.1f} ms "
        f"-> {ratio:.2f}x ({verdict} target <= {target:g}x)"
    )
