"""How the benchmarks print a distribution of timings: one place, so every figure reads the same way."""
from __future__ import annotations

import statistics


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank p-th percentile of `values` (the largest for p 100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_ms(seconds: list[float], points: tuple[float, ...] = (90,)) -> str:
    """`p50 12.3 ms, p90 20.1 ms, max 25.0 ms` of timings in seconds (the median, the given
    percentiles, the largest)."""
    parts = [f"p50 {statistics.median(seconds) * 1000:.1f} ms"]
    parts += [f"p{p:g} {percentile(seconds, p) * 1000:.1f} ms" for p in points]
    return ", ".join(parts + [f"max {max(seconds) * 1000:.1f} ms"])
