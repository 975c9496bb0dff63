"""What every benchmark here measures a run by, and how rounds are combined.

A run sends ``messages`` with ``window`` outstanding and records how long
it took and each message's latency.  Paths are compared by the median over
rounds of their paired throughput ratios: the paths of one round run back
to back, so a slow spell of the machine hits both sides of a ratio alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import attrs


@attrs.frozen
class RunResult:
    """One counted run of one path."""

    messages: int
    window: int
    seconds: float
    latencies: list[float]
    # CPU seconds spent during the run by this process and by the peer
    # (0 where the benchmark does not measure them).
    cpu_client: float = 0.0
    cpu_server: float = 0.0

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds


def median_throughput(runs: Iterable[RunResult]) -> float:
    """The median messages per second over ``runs``."""
    return statistics.median(run.throughput for run in runs)


def paired_ratio(mine: Sequence[RunResult], base: Sequence[RunResult]) -> float:
    """Median over rounds of ``mine``'s throughput / ``base``'s, round by round."""
    pairs = zip(mine, base, strict=True)
    return statistics.median(a.throughput / b.throughput for a, b in pairs)


def latency_quantile(runs: Iterable[RunResult], quantile: float) -> float:
    """The latency quantile over every message of ``runs`` (nearest rank)."""
    samples = sorted(x for run in runs for x in run.latencies)
    index = max(0, min(len(samples) - 1, round(quantile * len(samples)) - 1))
    return samples[index]
