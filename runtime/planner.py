"""Rank plans for a deployment target: measure, select, predict, and check by measuring.

``Planner`` gathers what selection needs for one model on one target: the per-layer cost
table (``runtime.costs``, cached), the singular values of every candidate layer, the
model's dense latency and MACs. ``Planner.select`` turns a budget (a fraction of the dense
latency, or of the dense MACs) into a ``{name: rank}`` plan
(``trp_zoo.algorithms.rank_selection``) with its predicted latency; ``measure_plans``
builds the dense and planned models as engines and times them interleaved, which is the
number that counts.

The predicted latency is the dense model's measured latency minus the per-layer savings
measured in isolation; per-graph overheads (input and output reorders, the call itself)
are the same for a layer's dense and factorized probes and cancel in those savings. Where
the candidate layers timed alone add up to more than the whole model (small layers at
batch 1, where each call's fixed cost dominates), every layer cost is scaled down by
``dense latency / their sum`` so that no plan is predicted faster than the layers allow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

import trp_zoo
from trp_zoo.algorithms.layers import Patterns
from trp_zoo.algorithms.rank_selection import (
    Budget,
    LayerOptions,
    Option,
    Proportionality,
    Selection,
    energy_threshold_plan,
    max_saving,
    select_ranks,
)
from trp_zoo.algorithms.sensitivity import output_sensitivity
from trp_zoo.lowrank.linears import LayerKind, check_kind, looked_for
from trp_zoo.lowrank.spectra import energy_curve, layer_spectra

from .cost_cache import CostCache
from .costs import CostTable, Progress, cost_table, latencies, model_latency
from .latency import LatencyStats
from .probes import LinearProbe
from .target import Target
from .target_plans import TargetPlan, check_fraction


class Planner:
    """Costs and spectra of one model on one target, ready to select rank plans.

    ``layers`` picks the candidates (``conv``, ``linear`` or ``all``, as ``decompose``);
    Linears are priced, like convs, by their probes at their token count.
    """

    def __init__(
        self,
        model: nn.Module,
        target: Target,
        scheme: str = "channel",
        *,
        include: Patterns = None,
        exclude: Patterns = None,
        layers: LayerKind = "all",
        cache: CostCache | None = None,
        rank_step: int = 8,
        max_candidates: int = 32,
        warmup: int = 3,
        runs: int = 15,
        progress: Progress = None,
        sensitivity_images: Tensor | None = None,
        sensitivity_batch_size: int = 256,
    ) -> None:
        self.model = model.eval()
        self.target = target
        self.scheme = trp_zoo.get_scheme(scheme).name
        self.cache = cache or CostCache()
        self.table: CostTable = cost_table(
            self.model,
            target,
            self.scheme,
            include=include,
            exclude=exclude,
            layers=layers,
            cache=self.cache,
            rank_step=rank_step,
            max_candidates=max_candidates,
            warmup=warmup,
            runs=runs,
            progress=progress,
        )
        if not self.table.layers:
            raise ValueError(
                f"nothing to plan: no {looked_for(check_kind(layers))} of the model is a "
                "candidate with a rank that lowers its cost (the stem and classifier stay "
                "dense); choose other layers (conv, linear or all) or include patterns"
            )
        # exports made here are reused by ``measure`` while the planner lives
        self._workdir = tempfile.TemporaryDirectory(prefix="trp-plan-")
        self.workdir = Path(self._workdir.name)
        self.dense_ms = model_latency(
            self.model,
            target,
            cache=self.cache,
            workdir=self.workdir,
            warmup=warmup,
            runs=runs,
            progress=progress,
        )
        # Layers timed alone carry per-call costs the whole model pays once; where they add
        # up to more than the whole model (tiny layers, batch 1), every layer cost is scaled
        # down so that they fit in it: otherwise the predicted savings can exceed the dense
        # latency itself (predicted fractions near or below zero).
        alone_ms = sum(lc.costs.dense_ms for lc in self.table.layers.values())
        self.layer_cost_scale = min(1.0, self.dense_ms / alone_ms) if alone_ms > 0 else 1.0
        self.dense_macs = trp_zoo.count_flops(self.model, target.input_size)
        modules = dict(self.model.named_modules())
        self.spectra = layer_spectra({n: modules[n] for n in self.table.layers}, self.scheme)
        self.energies = {n: energy_curve(s) for n, s in self.spectra.items()}
        self.options = [
            LayerOptions(
                name=name,
                dense_ms=self.layer_ms(name),
                dense_macs=lc.probe.macs(None),
                options=tuple(
                    Option(r, self.layer_ms(name, r), lc.probe.macs(r), self.energy_at(name, r))
                    for r in lc.ranks
                ),
            )
            for name, lc in self.table.layers.items()
        ]
        self.objective = "energy"
        self.sensitivity: dict[str, dict[int, float]] | None = None
        if sensitivity_images is not None:
            self.use_sensitivity(
                sensitivity_images, batch_size=sensitivity_batch_size, progress=progress
            )

    def use_sensitivity(
        self, images: Tensor, *, batch_size: int = 256, progress: Progress = None
    ) -> None:
        """Price each useful rank by the output divergence it causes on ``images``
        (``trp_zoo.algorithms.sensitivity``) instead of the energy it loses; ``select`` and
        ``calibrate`` then minimize the plan's summed divergence."""
        ranks = {lo.name: [o.rank for o in lo.useful()] for lo in self.options}
        if progress:
            n = sum(len(rs) for rs in ranks.values())
            progress(f"sensitivity: {n} layer ranks, a forward pass over {len(images)} images each")
        self.sensitivity = output_sensitivity(
            self.model, self.scheme, ranks, images, batch_size=batch_size, progress=bool(progress)
        )
        self.options = [
            dataclasses.replace(
                lo,
                options=tuple(
                    dataclasses.replace(o, sensitivity=self.sensitivity[lo.name].get(o.rank))
                    for o in lo.options
                ),
            )
            for lo in self.options
        ]
        self.objective = f"output KL divergence on {len(images)} images"

    def output_kl(self, plan: Mapping[str, int]) -> float | None:
        """Summed measured divergence of a plan (None without sensitivity, or for ranks
        not measured)."""
        if self.sensitivity is None:
            return None
        try:
            return sum(self.sensitivity[n][r] for n, r in plan.items())
        except KeyError:
            return None

    def measure(
        self, plans: Mapping[str, Mapping[str, int]], *, warmup: int = 3, runs: int = 15
    ) -> dict[str, LatencyStats]:
        """Time the dense model and each plan on the target, interleaved (``measure_plans``)."""
        return measure_plans(
            self.model,
            plans,
            self.scheme,
            self.target,
            warmup=warmup,
            runs=runs,
            workdir=self.workdir,
        )

    def calibrate(
        self,
        latency: float,
        *,
        tolerance: float = 0.03,
        attempts: int = 4,
        min_quotient: float | None = 1.0,
        warmup: int = 3,
        runs: int = 15,
        progress: Progress = None,
    ) -> tuple[TargetPlan, dict[str, LatencyStats], list[dict[str, float]]]:
        """The plan whose *measured* latency is ``latency`` of the dense model's.

        Layer-by-layer tables predict a whole model's latency only approximately (a conv
        timed alone keeps its weights in cache; in the model they stream from memory), so
        the budget is corrected by what each attempt measures: the next one asks for the
        saving scaled by how far the measured saving missed the wanted one (at most 2x per
        step), until the measured fraction is within ``tolerance`` (relative) or after
        ``attempts``. Returns the last plan, its timing and every attempt's
        ``{"budget", "predicted", "measured"}`` fractions.
        """
        wanted = check_fraction(latency, "latency")
        if attempts < 1 or tolerance <= 0:
            raise ValueError("attempts must be >= 1 and tolerance > 0")
        floor = 1.0 - max_saving(self.options, "latency") / self.dense_ms
        budget, history = wanted, []
        for _ in range(attempts):
            budget = min(max(budget, floor + 1e-3), 1.0)
            plan = self.select(latency=budget, min_quotient=min_quotient)
            stats = self.measure({"planned": plan.plan}, warmup=warmup, runs=runs)
            measured = stats["planned"].p50_ms / stats["dense"].p50_ms
            history.append(
                {"budget": budget, "predicted": plan.predicted_fraction, "measured": measured}
            )
            if progress:
                progress(
                    f"budget {budget:.3f}: predicted {plan.predicted_fraction:.3f}, "
                    f"measured {measured:.3f} of dense (want {wanted:.3f})"
                )
            if abs(measured / wanted - 1.0) <= tolerance or measured >= 1.0:
                break
            scale = (1.0 - wanted) / max(1.0 - measured, 1e-6)
            budget = 1.0 - (1.0 - budget) * min(max(scale, 0.5), 2.0)
        return plan, stats, history

    def energy_at(self, name: str, rank: int) -> float:
        return float(self.energies[name][rank - 1])

    def mean_energy(self, plan: Mapping[str, int]) -> float:
        """Mean kept energy over the candidate layers (1.0 for those the plan keeps dense)."""
        values = [self.energy_at(n, plan[n]) if n in plan else 1.0 for n in self.energies]
        return sum(values) / len(values) if values else 1.0

    def macs(self, plan: Mapping[str, int]) -> int:
        """MACs per image of the model factorized by ``plan`` (candidate layers only)."""
        layers = self.table.layers
        return self.dense_macs - sum(
            layers[n].probe.macs(None) - layers[n].probe.macs(r) for n, r in plan.items()
        )

    def layer_ms(self, name: str, rank: int | None = None) -> float:
        """A candidate layer's cost in the model, dense or at ``rank`` (its table's time,
        scaled by ``layer_cost_scale``)."""
        lc = self.table.layers[name]
        ms = lc.costs.dense_ms if rank is None else lc.option_ms(rank)
        return self.layer_cost_scale * ms

    def predicted_ms(self, plan: Mapping[str, int]) -> float | None:
        """Predicted latency of a plan whose ranks were all measured (None otherwise)."""
        saving = 0.0
        for name, rank in plan.items():
            lc = self.table.layers.get(name)
            if lc is None or rank not in lc.costs.rank_ms:
                return None
            saving += self.layer_ms(name) - self.layer_ms(name, rank)
        return self.dense_ms - saving

    def energy_plan(self, energy: float) -> dict[str, int]:
        """The energy-threshold plan (TRP's own criterion) over the same candidate layers
        (a Linear's geometry is a ``1 x 1`` stride-1 conv's, which both schemes price alike)."""
        geoms = {n: lc.probe.geom for n, lc in self.table.layers.items()}
        return energy_threshold_plan(self.spectra, geoms, self.scheme, energy)

    def select(
        self,
        *,
        latency: float | None = None,
        macs: float | None = None,
        min_quotient: float | None = 1.0,
        resolution: int = 4000,
    ) -> TargetPlan:
        """The plan for a budget: ``latency`` or ``macs`` as a fraction of the dense model.

        ``min_quotient``: the predicted speed-up must be at least this multiple of the MACs
        reduction (``selector.Proportionality``; ``None`` or 0: no such constraint). Where
        the budget cannot be met that way, the plan closest to it is returned with
        ``TargetPlan.proportional`` False.
        """
        if min_quotient is not None and not (
            isinstance(min_quotient, (int, float)) and 0 <= min_quotient <= 4
        ):
            raise ValueError(f"min_quotient must be a number in [0, 4], got {min_quotient!r}")
        prop = (
            Proportionality(self.dense_ms, self.dense_macs, float(min_quotient))
            if min_quotient
            else None
        )
        if (latency is None) == (macs is None):
            raise ValueError("give exactly one budget: a latency fraction or a MACs fraction")
        budget: Budget
        if latency is not None:
            budget, fraction = "latency", check_fraction(latency, "latency")
            required = (1.0 - fraction) * self.dense_ms
        else:
            budget, fraction = "macs", check_fraction(macs, "MACs")
            required = (1.0 - fraction) * self.dense_macs
        try:
            sel = select_ranks(
                self.options, budget, required, resolution=resolution, proportionality=prop
            )
        except ValueError as err:
            raise ValueError(
                f"{budget} fraction {fraction} is out of reach: {err}. {self._reach(budget)}"
            ) from None
        return self._result(sel, budget, fraction, min_quotient or None)

    def _reach(self, budget: Budget) -> str:
        best = max_saving(self.options, budget)
        total = self.dense_ms if budget == "latency" else self.dense_macs
        # rounded up, so that asking for the fraction shown is within reach
        lowest = math.ceil((total - best) / total * 100) / 100
        return (
            f"With these candidate ranks the {budget} can go down to about "
            f"{lowest:.2f} of the dense model; ask for that or more"
        )

    def _result(
        self, sel: Selection, budget: Budget, fraction: float, min_quotient: float | None
    ) -> TargetPlan:
        layers = []
        for lo in self.options:
            lc = self.table.layers[lo.name]
            rank = sel.plan.get(lo.name)
            layers.append(
                {
                    "name": lo.name,
                    "kind": "linear" if isinstance(lc.probe, LinearProbe) else "conv",
                    "shape": lc.probe.describe(),
                    "rank": rank,
                    "full_rank": trp_zoo.get_scheme(lc.probe.scheme).full_rank(lc.probe.geom),
                    "energy": sel.energy[lo.name],
                    "sensitivity": (
                        None
                        if rank is None or self.sensitivity is None
                        else self.sensitivity[lo.name].get(rank)
                    ),
                    "dense_ms": lo.dense_ms,
                    "planned_ms": self.layer_ms(lo.name, rank),
                    "useful_ranks": [o.rank for o in lo.useful()],
                }
            )
        return TargetPlan(
            plan=sel.plan,
            scheme=self.scheme,
            budget=budget,
            fraction=fraction,
            target=self.target,
            target_key=self.table.target_key,
            dense_ms=self.dense_ms,
            predicted_ms=self.dense_ms - sel.latency_saving_ms,
            dense_macs=self.dense_macs,
            planned_macs=self.dense_macs - sel.macs_saving,
            mean_energy=self.mean_energy(sel.plan),
            layers=layers,
            min_quotient=min_quotient,
            proportional=sel.proportional,
            objective=self.objective,
            output_kl=self.output_kl(sel.plan),
            layer_cost_scale=self.layer_cost_scale,
        )


def plan_ranks(
    model: nn.Module,
    target: Target,
    *,
    latency: float | None = None,
    macs: float | None = None,
    scheme: str = "channel",
    min_quotient: float | None = 1.0,
    cache_dir: str | os.PathLike[str] | None = None,
    **planner_options: Any,
) -> TargetPlan:
    """Select a ``{name: rank}`` plan for ``model`` on ``target`` within one budget."""
    if latency is not None:
        check_fraction(latency, "latency")
    if macs is not None:
        check_fraction(macs, "MACs")
    planner = Planner(model, target, scheme, cache=CostCache(cache_dir), **planner_options)
    return planner.select(latency=latency, macs=macs, min_quotient=min_quotient)


def measure_plans(
    model: nn.Module,
    plans: Mapping[str, Mapping[str, int]],
    scheme: str,
    target: Target,
    *,
    warmup: int = 3,
    runs: int = 15,
    workdir: str | os.PathLike[str] | None = None,
) -> dict[str, LatencyStats]:
    """Time the dense model (``dense``) and each planned factorization, interleaved."""
    models: dict[str, nn.Module] = {"dense": model.eval()}
    for label, plan in plans.items():
        if label == "dense":
            raise ValueError("'dense' names the dense model; label the plans otherwise")
        models[label] = trp_zoo.decompose(model, scheme, rank=dict(plan), method="gram").eval()
    return latencies(models, target, workdir=workdir, warmup=warmup, runs=runs)
