"""Latency-aware rank selection: per-layer ranks that spend a budget where it keeps most energy.

Each candidate layer either stays dense or takes one of its measured ranks ``r``. A rank
saves ``dense cost - cost(r)`` (latency on the target from a cost table, or MACs) and keeps
the fraction ``e(r) = sum_{k<=r} s_k^2 / sum_k s_k^2`` of the layer's spectral energy
(``s``: singular values of the layer's weight reshaped by the scheme, see
``spectra.energy_curve``).
Given the saving the budget requires, ``select_ranks`` picks one option per layer that
maximizes the total kept energy ``sum_i e_i`` (equivalently, minimizes the sum of the
layers' relative squared approximation errors ``sum_i (1 - e_i)``) subject to
``sum_i saving_i >= required``. Options that carry a measured sensitivity (the output
divergence that rank causes, ``trp_zoo.algorithms.sensitivity``) are priced by it instead:
the selection then minimizes the summed divergence.

That is a multiple-choice knapsack; it is solved exactly, up to rounding the savings down
to ``resolution`` steps of ``required / resolution``, by dynamic programming over the
saving reached so far (``best[k]``: least energy lost for a saving of at least ``k`` steps,
capped at ``resolution``), one layer at a time, in ``O(layers x options x resolution)``.
Rounding down makes the selected plan's predicted saving at least the required one.

Before that, each layer's options are filtered by what the hardware does:

- a rank that is not faster than the dense layer is dropped; a layer with no rank left
  stays dense whatever the budget;
- a rank is dropped when a larger measured rank is at least as fast (it keeps more
  energy for no more time). Vector units and blocked layouts make latency a staircase in
  the rank (flat between multiples of 8 or 16), so this keeps the rank at the top of each
  step: the hardware-friendly multiples, wherever they are faster.

Both filters use latency also when the budget is in MACs: the MACs budget then decides
how much to cut, and the hardware still decides which ranks are worth having.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch import Tensor

from ..lowrank.convs import ConvGeometry
from ..lowrank.criteria import EnergyThreshold
from ..lowrank.schemes import get_scheme

Budget = Literal["latency", "macs"]


@dataclass(frozen=True)
class Option:
    """One rank of one layer: its measured latency, MACs and kept energy, and optionally
    a measured ``sensitivity`` (see ``trp_zoo.algorithms.sensitivity``)."""

    rank: int
    latency_ms: float
    macs: int
    energy: float
    sensitivity: float | None = None

    @property
    def loss(self) -> float:
        """What the selector minimizes, summed over layers: the measured sensitivity
        where there is one, else the energy lost (``1 - energy``)."""
        return self.sensitivity if self.sensitivity is not None else 1.0 - self.energy


@dataclass(frozen=True)
class LayerOptions:
    """A candidate layer: its dense cost and the ranks it may take."""

    name: str
    dense_ms: float
    dense_macs: int
    options: tuple[Option, ...]

    def useful(self) -> tuple[Option, ...]:
        """Ranks faster than dense that no larger rank matches or beats in latency."""
        faster = [o for o in self.options if o.latency_ms < self.dense_ms]
        return tuple(
            o
            for o in sorted(faster, key=lambda o: o.rank)
            if not any(p.rank > o.rank and p.latency_ms <= o.latency_ms for p in faster)
        )

    def saving(self, option: Option, budget: Budget) -> float:
        if budget == "latency":
            return self.dense_ms - option.latency_ms
        return float(self.dense_macs - option.macs)


@dataclass(frozen=True)
class Proportionality:
    """Asks a plan to turn its MACs reduction into at least ``quotient`` times as much
    speed-up, as the cost table predicts it for the whole model (``dense_ms``, ``dense_macs``).

    With savings ``dt_i`` (ms) and ``dm_i`` (MACs), the predicted speed-up over the MACs
    reduction is ``(T / (T - sum dt)) / (M / (M - sum dm))``; it is at least ``q`` exactly
    when ``sum_i (q dt_i / T - dm_i / M) >= q - 1``: a linear constraint, one term per layer
    (``excess``). A layer whose saved MACs save time at the model's average rate or better
    adds to it; thin 1x1 factorizations that the hardware runs slowly take from it.
    """

    dense_ms: float
    dense_macs: int
    quotient: float = 1.0

    def excess(self, layer: LayerOptions, option: Option) -> float:
        return (
            self.quotient * layer.saving(option, "latency") / self.dense_ms
            - layer.saving(option, "macs") / self.dense_macs
        )

    def predicted_quotient(self, latency_saving_ms: float, macs_saving: float) -> float:
        speedup = self.dense_ms / (self.dense_ms - latency_saving_ms)
        return speedup / (self.dense_macs / (self.dense_macs - macs_saving))


@dataclass(frozen=True)
class Selection:
    """The chosen ranks and what they save (dense layers are absent from ``plan``)."""

    plan: dict[str, int]
    budget: Budget
    required_saving: float
    latency_saving_ms: float
    macs_saving: int
    energy: dict[str, float]  # kept energy of every candidate layer (1.0 when dense)
    proportional: bool = True  # the Proportionality asked for (if any) is met

    @property
    def mean_energy(self) -> float:
        return float(np.mean(list(self.energy.values()))) if self.energy else 1.0


def max_saving(layers: Sequence[LayerOptions], budget: Budget) -> float:
    """The largest saving any selection from these options reaches."""
    return sum(max((lo.saving(o, budget) for o in lo.useful()), default=0.0) for lo in layers)


def select_ranks(
    layers: Sequence[LayerOptions],
    budget: Budget,
    required_saving: float,
    *,
    resolution: int = 4000,
    proportionality: Proportionality | None = None,
) -> Selection:
    """Options maximizing the total kept energy with a saving of at least ``required_saving``.

    ``budget`` says what the saving is measured in: ``latency`` (ms) or ``macs``. With
    ``proportionality``, the plan must also turn its MACs reduction into at least that
    much speed-up (predicted); ``Selection.proportional`` says whether it could. Raises
    ``ValueError`` when even the cheapest options do not save enough.
    """
    if budget not in ("latency", "macs"):
        raise ValueError(f"budget must be 'latency' or 'macs', got {budget!r}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    useful = [lo.useful() for lo in layers]
    chosen: list[Option | None] = [None] * len(layers)
    met = True
    if required_saving > 0:
        reachable = max_saving(layers, budget)
        if reachable < required_saving:
            raise ValueError(
                f"the measured ranks save at most {reachable:.4g} "
                f"{'ms' if budget == 'latency' else 'MACs'}, short of the {required_saving:.4g} "
                "the budget needs"
            )
        chosen = _knapsack(layers, useful, budget, required_saving, resolution)
        if proportionality is not None:
            chosen, met = _proportional(
                layers, useful, budget, required_saving, resolution, proportionality, chosen
            )
    plan, energy = {}, {}
    latency = macs = 0.0
    for lo, option in zip(layers, chosen, strict=True):
        energy[lo.name] = 1.0 if option is None else option.energy
        if option is not None:
            plan[lo.name] = option.rank
            latency += lo.saving(option, "latency")
            macs += lo.saving(option, "macs")
    return Selection(plan, budget, float(required_saving), latency, int(macs), energy, met)


def _excess(
    layers: Sequence[LayerOptions], chosen: Sequence[Option | None], prop: Proportionality
) -> float:
    return sum(prop.excess(lo, o) for lo, o in zip(layers, chosen, strict=True) if o is not None)


def _proportional(
    layers: Sequence[LayerOptions],
    useful: Sequence[tuple[Option, ...]],
    budget: Budget,
    required: float,
    k: int,
    prop: Proportionality,
    chosen: list[Option | None],
) -> tuple[list[Option | None], bool]:
    """The most energy within the budget that also meets ``prop`` (Lagrangian relaxation).

    Each option's energy loss is lowered by ``lam * excess`` and the knapsack solved again;
    the excess of the optimum grows with ``lam``, so ``lam`` is bisected (on a log scale)
    to the smallest value that meets the constraint. Where no ``lam`` meets it, the
    selection with the largest excess is returned and flagged.
    """
    need = prop.quotient - 1.0
    if _excess(layers, chosen, prop) >= need:
        return chosen, True
    lo_lam, hi_lam = 0.0, 1.0
    while True:
        hi_pick = _knapsack(layers, useful, budget, required, k, prop, hi_lam)
        if _excess(layers, hi_pick, prop) >= need:
            break
        if hi_lam >= 1e8:
            return hi_pick, False
        lo_lam, hi_lam = hi_lam, hi_lam * 8
    for _ in range(16):
        mid = (lo_lam + hi_lam) / 2 if lo_lam == 0.0 else math.sqrt(lo_lam * hi_lam)
        pick = _knapsack(layers, useful, budget, required, k, prop, mid)
        if _excess(layers, pick, prop) >= need:
            hi_lam, hi_pick = mid, pick
        else:
            lo_lam = mid
    return hi_pick, True


def _knapsack(
    layers: Sequence[LayerOptions],
    useful: Sequence[tuple[Option, ...]],
    budget: Budget,
    required: float,
    k: int,
    prop: Proportionality | None = None,
    lam: float = 0.0,
) -> list[Option | None]:
    """Multiple-choice knapsack by dynamic programming over ``k`` saving steps; each
    option costs its energy loss, less ``lam`` times its excess under ``prop``."""

    def loss_of(lo: LayerOptions, option: Option) -> float:
        loss = option.loss
        return loss - lam * prop.excess(lo, option) if prop is not None and lam else loss

    step = required / k
    inf = np.inf
    best = np.full(k + 1, inf)
    best[0] = 0.0
    tables: list[np.ndarray] = []  # best[] before each layer, for the backtrack
    picks: list[np.ndarray] = []  # option index (-1: dense) reaching each state
    for lo, options in zip(layers, useful, strict=True):
        tables.append(best)
        new, pick = best.copy(), np.full(k + 1, -1, dtype=np.int32)
        for j, option in enumerate(options):
            q = min(int(lo.saving(option, budget) / step), k)
            loss = loss_of(lo, option)
            shifted = np.full(k + 1, inf)
            shifted[q:k] = best[: k - q] + loss
            shifted[k] = best[k - q :].min() + loss
            better = shifted < new
            new[better], pick[better] = shifted[better], j
        best = new
        picks.append(pick)
    if not np.isfinite(best[k]):
        # Rounding down lost up to a step per layer: the budget is within that of the most
        # the options save (``select_ranks`` checked it is reachable), and only selections
        # that close to the most saving meet it. Take the most saving option of every layer.
        most: list[Option | None] = []
        for lo, options in zip(layers, useful, strict=True):
            savings = [lo.saving(o, budget) for o in options]
            most.append(options[int(np.argmax(savings))] if options else None)
        return most
    chosen: list[Option | None] = [None] * len(layers)
    state = k
    for i in range(len(layers) - 1, -1, -1):
        j = int(picks[i][state])
        if j < 0:
            continue
        option = useful[i][j]
        chosen[i] = option
        q = min(int(layers[i].saving(option, budget) / step), k)
        if state < k:
            state -= q
        else:  # any earlier state at or above k - q led here: take the best of them
            state = k - q + int(np.argmin(tables[i][k - q :] + loss_of(layers[i], option)))
    return chosen


def energy_threshold_plan(
    spectra: Mapping[str, Tensor],
    geoms: Mapping[str, ConvGeometry],
    scheme: str,
    energy: float,
) -> dict[str, int]:
    """The plan TRP's energy criterion gives: per layer the smallest rank keeping ``energy``
    of the squared singular values, layers whose rank would not lower their MACs left out."""
    sch, criterion = get_scheme(scheme), EnergyThreshold(energy)
    plan = {}
    for name, s in spectra.items():
        rank = criterion(s.float())
        if sch.lowers_cost(geoms[name], rank):
            plan[name] = rank
    return plan


def energy_for_macs(
    macs_at: Callable[[float], float],
    target_macs: float,
    *,
    low: float = 0.0,
    high: float = 1.0,
    steps: int = 40,
) -> float:
    """The largest energy threshold in ``[low, high]`` whose plan needs at most
    ``target_macs``, by bisection (``macs_at(energy)``: MACs of the model factorized at
    that threshold, which grow with it); ``low`` when none does."""
    for _ in range(steps):
        mid = (low + high) / 2
        if macs_at(mid) <= target_macs:
            low = mid
        else:
            high = mid
    return low
