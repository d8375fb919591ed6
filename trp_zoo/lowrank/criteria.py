"""Rank criteria: how many singular values a layer keeps.

A criterion is called on the singular values of one layer (descending, 1-D tensor)
and returns a rank in ``[1, len(s)]``. Criteria compose with ``&`` (the smaller rank
wins), so ``EnergyThreshold(0.95) & FixedRank(64)`` keeps 95% energy but at most 64.

Criteria also answer from a *partial* spectrum (the top ``k`` values plus the total
energy), which lets the TRP hook skip a full decomposition when the answer is already
determined; ``None`` means "needs the full spectrum".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
from torch import Tensor

from .spectra import energy_curve


class RankCriterion(ABC):
    """Base class: maps singular values (descending) to a rank."""

    @abstractmethod
    def select(self, s: Tensor) -> int:
        """Rank chosen from the full spectrum ``s``."""

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        """Rank chosen from the leading values only, or None when they do not decide it."""
        return None

    def __call__(self, s: Tensor) -> int:
        if s.ndim != 1 or s.numel() == 0:
            raise ValueError(
                f"expected a non-empty 1-D tensor of singular values, got {tuple(s.shape)}"
            )
        return _clamp(self.select(s), s.numel())

    def __and__(self, other: RankCriterion) -> MinRank:
        return MinRank(self, other)


def _clamp(rank: int, full_rank: int) -> int:
    return max(1, min(int(rank), full_rank))


class EnergyThreshold(RankCriterion):
    """Smallest rank whose singular values hold ``energy`` of the sum of squares."""

    def __init__(self, energy: float) -> None:
        if isinstance(energy, bool) or not 0.0 < float(energy) <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {energy!r}")
        self.energy = float(energy)

    def _first_reaching(self, s: Tensor, total: float) -> int | None:
        # a small tolerance so that energy=1.0 keeps every non-zero value despite rounding
        hit = np.flatnonzero(energy_curve(s, total) >= self.energy * (1 - 1e-12))
        return int(hit[0]) + 1 if hit.size else None

    def select(self, s: Tensor) -> int:
        total = float((s.double() ** 2).sum())
        if total == 0.0:
            return 1
        return self._first_reaching(s, total) or s.numel()

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        if total_energy == 0.0:
            return 1
        return self._first_reaching(s_top, total_energy)

    def __repr__(self) -> str:
        return f"EnergyThreshold({self.energy})"


class ValueThreshold(RankCriterion):
    """Keep the singular values ``>= threshold`` (at least one)."""

    def __init__(self, threshold: float) -> None:
        if isinstance(threshold, bool) or float(threshold) < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        self.threshold = float(threshold)

    def select(self, s: Tensor) -> int:
        return int((s >= self.threshold).sum())

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        kept = int((s_top >= self.threshold).sum())
        return kept if kept < s_top.numel() else None

    def __repr__(self) -> str:
        return f"ValueThreshold({self.threshold})"


class FixedRank(RankCriterion):
    """A fixed rank, capped at the layer's full rank."""

    def __init__(self, rank: int) -> None:
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.rank = int(rank)

    def select(self, s: Tensor) -> int:
        return self.rank

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        rank = min(self.rank, full_rank)
        return rank if rank <= s_top.numel() else None

    def __repr__(self) -> str:
        return f"FixedRank({self.rank})"


class RankRatio(RankCriterion):
    """A fraction of the layer's full rank, rounded up."""

    def __init__(self, ratio: float) -> None:
        if isinstance(ratio, bool) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)

    def _rank(self, full_rank: int) -> int:
        return math.ceil(self.ratio * full_rank - 1e-9)

    def select(self, s: Tensor) -> int:
        return self._rank(s.numel())

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        rank = self._rank(full_rank)
        return rank if rank <= s_top.numel() else None

    def __repr__(self) -> str:
        return f"RankRatio({self.ratio})"


class MinRank(RankCriterion):
    """The smallest rank of several criteria."""

    def __init__(self, *criteria: RankCriterion) -> None:
        if not criteria:
            raise ValueError("MinRank needs at least one criterion")
        self.criteria = tuple(criteria)

    def select(self, s: Tensor) -> int:
        return min(c(s) for c in self.criteria)

    def select_partial(self, s_top: Tensor, total_energy: float, full_rank: int) -> int | None:
        ranks = [c.select_partial(s_top, total_energy, full_rank) for c in self.criteria]
        return None if any(r is None for r in ranks) else min(r for r in ranks if r is not None)

    def __repr__(self) -> str:
        return " & ".join(repr(c) for c in self.criteria)


class FunctionCriterion(RankCriterion):
    """Wraps a user callable ``f(singular_values) -> rank``."""

    def __init__(self, fn: Callable[[Tensor], int]) -> None:
        self.fn = fn

    def select(self, s: Tensor) -> int:
        rank = self.fn(s)
        if isinstance(rank, bool) or int(rank) != rank:
            raise ValueError(f"rank callable {self.fn!r} returned {rank!r}; expected an integer")
        if rank < 1:
            raise ValueError(
                f"rank callable {self.fn!r} returned {rank!r}; a rank is at least 1 (to keep a "
                "layer dense, exclude it)"
            )
        return int(rank)

    def __repr__(self) -> str:
        return f"FunctionCriterion({self.fn!r})"


RankLike = int | float | RankCriterion | Callable[[Tensor], int]


def as_criterion(rank: RankLike) -> RankCriterion:
    """Turn an int (fixed rank), a float in (0, 1) (energy) or a callable into a criterion."""
    if isinstance(rank, RankCriterion):
        return rank
    if isinstance(rank, bool):
        raise ValueError(f"rank must be an int, a float in (0, 1) or a criterion, got {rank!r}")
    if isinstance(rank, int):
        return FixedRank(rank)
    if isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise ValueError(
                f"a float rank is an energy threshold and must lie in (0, 1), got {rank}; "
                "pass an int for a fixed rank"
            )
        return EnergyThreshold(rank)
    if callable(rank):
        return FunctionCriterion(rank)
    raise ValueError(
        f"rank must be an int, a float in (0, 1), a {{name: rank}} mapping or a callable, "
        f"got {type(rank).__name__}"
    )
