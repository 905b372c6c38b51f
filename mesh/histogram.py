"""A histogram for hot paths: fixed buckets and plain integer counts, read by a collector.

prometheus_client's own Histogram takes a lock per observation; these are only touched from
the one thread that serves, and exported by custom collectors (dns/metrics.py,
mesh/http/metrics.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class Histogram:
    """``counts[i]`` holds values in (bounds[i-1], bounds[i]]; ``observe(value, n)`` records
    ``n`` observations of ``value``."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf only
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.count += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs as Prometheus exposes them, +Inf last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            total += c
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out
