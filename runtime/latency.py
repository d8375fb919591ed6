"""Latency of several engines measured interleaved in one process, so noise hits all alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from .engine import Engine


@dataclass(frozen=True)
class LatencyStats:
    """Per-batch latency percentiles (milliseconds) and throughput."""

    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float  # batch / median latency

    @classmethod
    def of(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            batch=batch,
            runs=len(ms),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            mean_ms=float(ms.mean()),
            images_per_s=float(batch / (p50 / 1e3)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_interleaved(
    engines: Mapping[str, Engine],
    batch_sizes: Sequence[int],
    *,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> dict[int, dict[str, LatencyStats]]:
    """Time every engine at every batch size, alternating engines run by run.

    For each batch size: ``warmup`` untimed runs of each engine, then ``runs`` rounds in
    which every engine runs once, the order rotating each round so none always goes first.
    All engines must take the same input size.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    names = list(engines)
    sizes = {engines[n].input_size for n in names}
    if len(sizes) != 1:
        raise ValueError(f"engines take different input sizes: {sizes}")
    (size,) = sizes
    rng = np.random.default_rng(seed)
    results: dict[int, dict[str, LatencyStats]] = {}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *size), dtype=np.float32)
        for _ in range(warmup):
            for name in names:
                engines[name].timed(x)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in tqdm(range(runs), desc=f"batch {batch}", disable=not progress, leave=False):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(engines[name].timed(x))
        results[batch] = {n: LatencyStats.of(times[n], batch) for n in names}
    return results
