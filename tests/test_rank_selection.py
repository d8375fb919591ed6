"""Latency-aware rank selection: per-layer cost tables timed on ONNX Runtime and cached
(``runtime.costs``), the knapsack selector (``trp_zoo.algorithms.rank_selection``), the planner
(``runtime.planner``), ``python -m runtime.plan`` and the recipes' ``--target-latency``."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn

import runtime.costs
import runtime.plan
import runtime.planner
import trp_zoo
from runtime.cost_cache import CostCache, LayerCosts
from runtime.costs import cost_table, model_latency, structure_key
from runtime.latency import LatencyStats
from runtime.plan import main as plan_main
from runtime.planner import Planner, plan_ranks
from runtime.probes import LayerProbe, candidate_ranks
from runtime.target import Target
from runtime.target_plans import check_fraction
from tests.runtime_models import seed_cost_cache
from trp_zoo.algorithms.rank_selection import (
    LayerOptions,
    Option,
    Proportionality,
    energy_threshold_plan,
    max_saving,
    select_ranks,
)
from trp_zoo.lowrank.convs import ConvGeometry
from trp_zoo.lowrank.criteria import EnergyThreshold
from trp_zoo.lowrank.factorized import FactorizedConv2d
from trp_zoo.lowrank.schemes import get_scheme
from trp_zoo.lowrank.spectra import energy_curve, layer_spectra
from trp_zoo.train.config import (
    TrainConfig,
    build_parser,
    config_from_args,
    load_rank_plan,
    validate,
)

INPUT = (3, 16, 16)
TIMING: dict[str, Any] = {"runs": 2, "warmup": 1}  # few runs: these tests check no speed
SPATIAL: dict[str, Any] = {"scheme": "spatial"}


class TinyNet(nn.Module):
    """Five convs: a stem no rank makes cheaper, two convs with the same probe (conv2, conv3),
    and 64-channel 3x3 convs whose low ranks are several times cheaper than dense."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.stem, self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


CANDIDATES = {"conv1", "conv2", "conv3", "conv4"}  # the stem has no rank lowering its MACs


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


def target(**kw: Any) -> Target:
    return Target(**{"batch_size": 2, "input_size": INPUT, "threads": 1, **kw})


TIMERS = ("time_engines", "measure_layer", "latencies")


def no_timing(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make any attempt to time a layer or a model (or only ``names``) fail the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("timed something that should have come from the cache")

    for name in names or TIMERS:
        monkeypatch.setattr(runtime.costs, name, boom)


def counting_measure_layer(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Spy on ``measure_layer`` (still timing for real); returns the ranks of each call."""
    real, calls = runtime.costs.measure_layer, []

    def spy(probe: LayerProbe, ranks: Any, *args: Any, **kwargs: Any) -> LayerCosts:
        calls.append(list(ranks))
        return real(probe, ranks, *args, **kwargs)

    monkeypatch.setattr(runtime.costs, "measure_layer", spy)
    return calls


def keys(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in entries)


# ----------------------------------------------------------------------------- targets, probes


def test_target_rejects_bad_settings() -> None:
    for bad in ({"batch_size": 0}, {"batch_size": 2.0}, {"threads": 0}, {"precision": "int4"}):
        with pytest.raises(ValueError):
            target(**bad)
    with pytest.raises(ValueError):
        target(input_size=(3, 16))


def test_candidate_ranks_are_aligned_and_lower_the_cost() -> None:
    channel = get_scheme("channel")
    small = ConvGeometry.of(nn.Conv2d(64, 64, 3))  # r * (576 + 64) < 36864: r <= 57
    assert candidate_ranks("channel", small) == [8, 16, 24, 32, 40, 48, 56]
    big = ConvGeometry.of(nn.Conv2d(512, 512, 3))  # up to 460: too many multiples of 8
    ranks = candidate_ranks("channel", big, step=8, limit=32)
    assert len(ranks) <= 32 and ranks[0] == 16 and all(r % 16 == 0 for r in ranks)
    assert ranks[-1] == channel.max_useful_rank(big) // 16 * 16
    assert all(channel.lowers_cost(big, r) for r in ranks)
    assert candidate_ranks("channel", ConvGeometry.of(nn.Conv2d(3, 8, 3))) == []
    with pytest.raises(ValueError, match=">= 1"):
        candidate_ranks("channel", small, step=0)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_probe_macs_match_the_factorized_layer(scheme: str) -> None:
    conv = nn.Conv2d(32, 48, 3, stride=2, padding=1)
    probe = LayerProbe(scheme, ConvGeometry.of(conv), (15, 15))
    assert probe.macs(None) == trp_zoo.count_flops(conv, (32, 15, 15))
    factorized = FactorizedConv2d(ConvGeometry.of(conv), 8, get_scheme(scheme))
    assert probe.macs(8) == trp_zoo.count_flops(factorized, (32, 15, 15))


# ----------------------------------------------------------------------------- cost tables


def test_cost_table_measures_once_then_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, cache = tiny_net(), CostCache(tmp_path / "costs")
    first = cost_table(model, target(), cache=cache, **TIMING)
    assert set(first.layers) == CANDIDATES
    # conv2 and conv3 share a probe: timed once, one cache entry
    probes = {n: lc.probe.key() for n, lc in first.layers.items()}
    assert keys(first.measured) == keys([probes[n] for n in ("conv1", "conv2", "conv4")])
    assert first.reused == []
    assert first.layers["conv2"].costs is first.layers["conv3"].costs
    for lc in first.layers.values():
        assert lc.ranks == tuple(candidate_ranks("channel", lc.probe.geom))
        assert set(lc.ranks) <= set(lc.costs.rank_ms)
        assert lc.costs.dense_ms > 0 and all(v > 0 for v in lc.costs.rank_ms.values())
        assert lc.costs.runs == 2 and lc.costs.warmup == 1
    assert len(list(cache.root.glob("*/layer-*.json"))) == 3

    no_timing(monkeypatch)
    second = cost_table(model, target(), cache=cache, **TIMING)
    assert second.measured == []
    assert keys(second.reused) == keys(first.measured)  # every layer's probe
    assert second.to_dict() == first.to_dict()
    # fewer runs than cached are satisfied too
    assert cost_table(model, target(), cache=cache, runs=1, warmup=0).measured == []


def test_cost_table_measures_again_when_the_key_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, cache = tiny_net(), CostCache(tmp_path / "costs")
    cost_table(model, target(), cache=cache, **TIMING)
    calls = counting_measure_layer(monkeypatch)
    changes: list[tuple[str, Target, dict[str, Any]]] = [
        ("batch size", target(batch_size=3), {}),
        ("input size", target(input_size=(3, 12, 12)), {}),
        ("threads", target(threads=2), {}),
        ("spinning", target(spinning=True), {}),
        ("scheme", target(), SPATIAL),
        ("more runs", target(), {"runs": 3, "warmup": 1}),
    ]
    for what, tgt, options in changes:
        calls.clear()
        table = cost_table(model, tgt, cache=cache, **{**TIMING, **options})
        assert len(table.measured) == 3, what
        assert table.reused == [], what
        assert len(calls) == 3, what

    # ranks the cache lacks: measured again, together with the cached ones
    calls.clear()
    table = cost_table(model, target(), cache=cache, rank_step=4, **TIMING)
    assert len(table.measured) == 3 and len(calls) == 3
    conv2 = table.layers["conv2"]
    assert conv2.ranks == tuple(range(4, 57, 4))
    assert calls[1] == sorted(set(conv2.ranks) | set(range(8, 57, 8)))

    # a damaged entry is a miss for that layer only
    conv1_key = table.layers["conv1"].probe.key()
    entry = next(
        p
        for p in cache.root.glob("*/layer-*.json")
        if json.loads(p.read_text())["target"] == target().resolve()[1]
        and json.loads(p.read_text())["key"] == conv1_key
    )
    entry.write_text("{not json")
    calls.clear()
    table = cost_table(model, target(), cache=cache, **TIMING)
    assert table.measured == [conv1_key] and len(table.reused) == 2 and len(calls) == 1

    # every entry the changes wrote is still there: the original target is all hits
    no_timing(monkeypatch)
    for tgt, options in [(target(), {}), (target(batch_size=3), {}), (target(), SPATIAL)]:
        assert cost_table(model, tgt, cache=cache, **{**TIMING, **options}).measured == []


def test_model_latency_is_cached_by_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, cache = tiny_net(), CostCache(tmp_path / "costs")
    dense_ms = model_latency(model, target(), cache=cache, **TIMING)
    assert dense_ms > 0
    no_timing(monkeypatch)
    torch.manual_seed(1)
    other_weights = TinyNet().eval()
    assert model_latency(other_weights, target(), cache=cache, **TIMING) == dense_ms

    timed: list[str] = []

    def fake(models: Any, tgt: Target, **kwargs: Any) -> dict[str, LatencyStats]:
        timed.append(str(tgt.batch_size))
        return {"model": LatencyStats.of([0.002, 0.003, 0.004], tgt.batch_size)}

    monkeypatch.setattr(runtime.costs, "latencies", fake)
    assert model_latency(model, target(), cache=cache, runs=3, warmup=1) == pytest.approx(3.0)
    assert model_latency(model, target(batch_size=4), cache=cache, **TIMING) == pytest.approx(3.0)
    other = copy.deepcopy(model)
    other.conv4 = FactorizedConv2d(ConvGeometry.of(TinyNet().conv4), 8, get_scheme("channel"))
    model_latency(other, target(), cache=cache, **TIMING)
    assert timed == ["2", "4", "2"]
    assert model_latency(model, target(), cache=cache, **TIMING) == pytest.approx(3.0)
    assert len(timed) == 3


# ----------------------------------------------------------------------------- the selector


def layer(name: str, dense_ms: float, options: dict[int, tuple[float, float]]) -> LayerOptions:
    """Options ``{rank: (latency ms, kept energy)}``; MACs: 100 per rank, 10000 dense."""
    return LayerOptions(
        name=name,
        dense_ms=dense_ms,
        dense_macs=10_000,
        options=tuple(Option(r, ms, 100 * r, e) for r, (ms, e) in options.items()),
    )


def test_a_layer_slower_than_dense_at_every_rank_stays_dense() -> None:
    slow = layer("slow", 1.0, {8: (1.2, 0.5), 16: (1.0, 0.7), 24: (1.5, 0.9)})
    fast = layer("fast", 1.0, {8: (0.2, 0.5), 16: (0.4, 0.7), 24: (0.6, 0.9)})
    assert slow.useful() == ()
    # the most energy that saves enough: 0.3 ms -> rank 24 (saves 0.4), 0.8 ms -> rank 8
    # (the only one saving 0.8), 7000 MACs -> rank 24 (10000 - 2400 saved)
    for budget, required, rank in (("latency", 0.3, 24), ("latency", 0.8, 8), ("macs", 7000, 24)):
        sel = select_ranks([slow, fast], budget, required)  # type: ignore[arg-type]
        assert "slow" not in sel.plan and sel.energy["slow"] == 1.0
        assert sel.plan["fast"] == rank
    with pytest.raises(ValueError, match=r"save at most 0\.8 ms"):
        select_ranks([slow, fast], "latency", 0.9)  # the slow layer's ranks do not count


def flat_layer(name: str, dense_ms: float, full: int = 64) -> LayerOptions:
    """A layer with a flat spectrum (energy r / full) whose latency grows with the rank."""
    return LayerOptions(
        name=name,
        dense_ms=dense_ms,
        dense_macs=full * 1000,
        options=tuple(
            Option(r, dense_ms * (0.1 + 0.8 * r / full), 1000 * r, r / full)
            for r in range(8, full, 8)
        ),
    )


@pytest.mark.parametrize("fraction", [0.95, 0.8, 0.6, 0.4, 0.25])
def test_the_budget_is_respected(fraction: float) -> None:
    layers = [flat_layer("a", 1.0), flat_layer("b", 2.0), flat_layer("c", 0.5, full=32)]
    dense_ms = sum(lo.dense_ms for lo in layers)
    dense_macs = sum(lo.dense_macs for lo in layers)
    by_latency = select_ranks(layers, "latency", (1 - fraction) * dense_ms)
    assert by_latency.latency_saving_ms >= (1 - fraction) * dense_ms
    by_macs = select_ranks(layers, "macs", (1 - fraction) * dense_macs)
    assert by_macs.macs_saving >= (1 - fraction) * dense_macs
    for sel in (by_latency, by_macs):
        assert 0 < len(sel.plan) <= 3
        planned_ms = sum(
            next(o.latency_ms for o in lo.options if o.rank == sel.plan[lo.name])
            if lo.name in sel.plan
            else lo.dense_ms
            for lo in layers
        )
        assert sel.latency_saving_ms == pytest.approx(dense_ms - planned_ms)
    # a looser budget never keeps less energy
    looser = select_ranks(layers, "latency", (1 - min(fraction + 0.1, 1.0)) * dense_ms)
    assert looser.mean_energy >= by_latency.mean_energy


def test_aligned_ranks_are_chosen_when_they_are_the_faster_ones() -> None:
    # a staircase: multiples of 16 are faster than the ranks around them
    ms = {8: 0.50, 12: 0.70, 16: 0.45, 20: 0.80, 24: 0.75, 28: 0.85, 32: 0.60, 36: 0.95}
    lo = layer("a", 1.0, {r: (t, r / 64) for r, t in ms.items()})
    assert [o.rank for o in lo.useful()] == [16, 32, 36]
    chosen = {
        required: select_ranks([lo], "latency", required).plan["a"]
        for required in (0.05, 0.3, 0.39, 0.5, 0.55)
    }
    assert chosen == {0.05: 36, 0.3: 32, 0.39: 32, 0.5: 16, 0.55: 16}
    # a MACs budget decides how much to cut; latency still decides which ranks are worth it
    assert select_ranks([lo], "macs", 10_000 - 100 * 30).plan["a"] == 16


def test_the_layer_losing_less_energy_is_cut() -> None:
    def spectrum_layer(name: str, s: torch.Tensor) -> LayerOptions:
        e = energy_curve(s)
        return layer(name, 1.0, {r: (0.5, float(e[r - 1])) for r in (8, 16)})

    flat = spectrum_layer("flat", torch.ones(64))
    steep = spectrum_layer("steep", torch.cat([torch.full((8,), 10.0), torch.full((56,), 0.1)]))
    for order in ([flat, steep], [steep, flat]):
        sel = select_ranks(order, "latency", 0.5)  # one cut is enough
        assert sel.plan == {"steep": 16}
        assert sel.energy["flat"] == 1.0 and sel.energy["steep"] > 0.99
    both = select_ranks([flat, steep], "latency", 1.0)
    assert both.plan == {"flat": 16, "steep": 16}


@pytest.mark.parametrize("seed", range(6))
def test_the_selection_is_optimal_among_all_combinations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(4):
        dense = float(rng.uniform(0.5, 2.0))
        ranks = sorted(rng.choice(np.arange(8, 65, 8), size=4, replace=False).tolist())
        energies = np.sort(rng.uniform(0.3, 1.0, size=4))
        latencies = rng.uniform(0.1, 1.2, size=4) * dense  # some slower than dense
        options = zip(ranks, latencies, energies, strict=True)
        layers.append(layer(f"l{i}", dense, {r: (float(t), float(e)) for r, t, e in options}))
    required = 0.5 * max_saving(layers, "latency")
    sel = select_ranks(layers, "latency", required)
    assert sel.latency_saving_ms >= required
    best = -math.inf
    for combo in itertools.product(*[(None, *lo.options) for lo in layers]):
        pairs = zip(layers, combo, strict=True)
        saving = sum(lo.saving(o, "latency") for lo, o in pairs if o is not None)
        if saving >= required * 1.001:  # a margin for the selector's rounding of savings
            best = max(best, sum(1.0 if o is None else o.energy for o in combo))
    assert sum(sel.energy.values()) >= best - 1e-9


def macs_layer(name: str, options: dict[int, tuple[float, int, float]]) -> LayerOptions:
    """Options ``{rank: (latency ms, MACs, kept energy)}``; dense: 1 ms, 1000 MACs."""
    return LayerOptions(
        name=name,
        dense_ms=1.0,
        dense_macs=1000,
        options=tuple(Option(r, ms, m, e) for r, (ms, m, e) in options.items()),
    )


def test_proportionality_turns_saved_macs_into_speed() -> None:
    # "thin" saves MACs the hardware barely turns into time; "fat" the other way round
    thin = macs_layer("thin", {8: (0.8, 300, 0.9)})
    fat = macs_layer("fat", {8: (0.2, 300, 0.7)})
    prop = Proportionality(dense_ms=2.0, dense_macs=2000)
    # a MACs budget of 30%: the most energy is to cut only "thin"; its speed-up (1.11x) is
    # well short of its MACs reduction (1.54x)
    free = select_ranks([thin, fat], "macs", 600)
    assert free.plan == {"thin": 8}
    assert prop.predicted_quotient(free.latency_saving_ms, free.macs_saving) < 0.8
    held = select_ranks([thin, fat], "macs", 600, proportionality=prop)
    assert held.plan == {"fat": 8} and held.proportional
    assert prop.predicted_quotient(held.latency_saving_ms, held.macs_saving) >= 1.0
    # a stricter quotient than any plan reaches: the closest plan, flagged
    strict = Proportionality(dense_ms=2.0, dense_macs=2000, quotient=1.5)
    best = select_ranks([thin, fat], "macs", 600, proportionality=strict)
    assert not best.proportional and best.plan == {"fat": 8}


@pytest.mark.parametrize("seed", range(4))
def test_proportional_plans_meet_budget_and_quotient(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(6):
        ranks = (8, 16, 24)
        options = {
            r: (float(rng.uniform(0.2, 0.9)), int(rng.uniform(100, 900)), float(e))
            for r, e in zip(ranks, np.sort(rng.uniform(0.3, 1.0, 3)), strict=True)
        }
        layers.append(macs_layer(f"l{i}", options))
    prop = Proportionality(dense_ms=7.0, dense_macs=7000)
    required = 0.4 * max_saving(layers, "latency")
    free = select_ranks(layers, "latency", required)
    held = select_ranks(layers, "latency", required, proportionality=prop)
    assert held.latency_saving_ms >= required
    if held.proportional:
        assert prop.predicted_quotient(held.latency_saving_ms, held.macs_saving) >= 1.0 - 1e-9
    assert sum(held.energy.values()) <= sum(free.energy.values()) + 1e-9  # a constraint costs


def test_a_budget_equal_to_the_most_the_ranks_save_is_met() -> None:
    # rounding the savings down must not turn the reachable maximum into a failure
    for sa, sb in itertools.product([0.1, 0.23, 0.37, 0.6], repeat=2):
        layers = [layer("a", 1.0, {8: (1.0 - sa, 0.5)}), layer("b", 1.0, {8: (1.0 - sb, 0.5)})]
        reach = max_saving(layers, "latency")
        sel = select_ranks(layers, "latency", reach)
        assert sel.plan == {"a": 8, "b": 8} and sel.latency_saving_ms >= reach


def test_selector_errors_and_the_empty_budget() -> None:
    layers = [flat_layer("a", 1.0)]
    assert select_ranks(layers, "latency", 0.0).plan == {}
    with pytest.raises(ValueError, match="budget must be"):
        select_ranks(layers, "energy", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="short of"):
        select_ranks(layers, "latency", 0.95)
    with pytest.raises(ValueError, match="resolution"):
        select_ranks(layers, "latency", 0.1, resolution=0)


# ----------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_singular_values_agree_with_svdvals(scheme: str) -> None:
    model = tiny_net()
    names = ["stem", "conv1", "conv4"]
    modules = dict(model.named_modules())
    spectra = layer_spectra({n: modules[n] for n in names}, scheme)
    for name in names:
        matrix = get_scheme(scheme).to_matrix(modules[name].weight.detach()).double()
        expected = torch.linalg.svdvals(matrix)
        got = spectra[name]
        assert got.dtype == torch.float64 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * float(expected[0]))


def test_energy_curve() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(energy_curve(s), [9 / 14, 13 / 14, 1.0, 1.0])
    np.testing.assert_array_equal(energy_curve(torch.zeros(5)), np.ones(5))


def test_energy_threshold_plan_follows_the_energy_criterion() -> None:
    model = tiny_net()
    names = ["stem", "conv1", "conv2", "conv4"]
    modules = dict(model.named_modules())
    spectra = layer_spectra({n: modules[n] for n in names}, "channel")
    geoms = {n: ConvGeometry.of(modules[n]) for n in names}
    sch = get_scheme("channel")
    plans = {}
    for energy in (0.3, 0.6, 0.9):
        plans[energy] = plan = energy_threshold_plan(spectra, geoms, "channel", energy)
        for name in names:
            rank = EnergyThreshold(energy)(spectra[name].float())
            e = energy_curve(spectra[name])
            assert e[rank - 1] >= energy - 1e-5 and (rank == 1 or e[rank - 2] < energy + 1e-5)
            assert plan.get(name) == (rank if sch.lowers_cost(geoms[name], rank) else None)
    # conv1 (8->64 3x3) is cheaper up to rank 33: cut for 30% of its energy, not for 90%
    assert "conv1" in plans[0.3] and "conv1" not in plans[0.9]


# ----------------------------------------------------------------------------- the planner


@pytest.fixture(scope="module")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    """A planner for the tiny net, timed on ONNX Runtime (its cache lives with the module)."""
    cache = CostCache(tmp_path_factory.mktemp("plan") / "costs")
    return Planner(tiny_net(), target(), cache=cache, **TIMING)


def reach(planner: Planner) -> float:
    """The lowest latency fraction the planner's measured ranks reach."""
    return 1.0 - max_saving(planner.options, "latency") / planner.dense_ms


def test_planner_plans_within_a_latency_budget(planner: Planner) -> None:
    lowest = reach(planner)
    # rank 8 of a 64-channel 3x3 conv has 7x fewer MACs: that must show on the target
    assert lowest < 0.95, f"the measured ranks barely save anything: {planner.table.to_dict()}"
    fraction = round((1.0 + lowest) / 2, 3)
    result = planner.select(latency=fraction)
    assert result.plan and set(result.plan) <= CANDIDATES
    assert result.predicted_fraction <= fraction + 1e-9
    assert result.predicted_ms == pytest.approx(planner.predicted_ms(result.plan))
    for name, rank in result.plan.items():
        assert rank in planner.table.layers[name].ranks
        assert rank in [o.rank for o in next(o for o in planner.options if o.name == name).useful()]
    out = json.loads(json.dumps(result.to_dict()))
    assert out["plan"] == result.plan
    assert out["budget"] == {"kind": "latency", "fraction": fraction}
    assert out["target"]["batch_size"] == 2 and out["target"]["input_size"] == list(INPUT)
    assert [r["name"] for r in out["layers"]] == sorted(CANDIDATES)

    # the plan decomposes: exactly the planned layers factorized at their ranks
    model = planner.model
    low = trp_zoo.decompose(model, "channel", rank=result.plan)
    assert trp_zoo.rank_plan(low) == result.plan
    for name in ("stem", *CANDIDATES - set(result.plan)):
        assert type(getattr(low, name)) is nn.Conv2d, name
    assert result.planned_macs == trp_zoo.count_flops(low, INPUT)
    assert result.dense_macs == trp_zoo.count_flops(model, INPUT)
    assert result.mean_energy == pytest.approx(planner.mean_energy(result.plan))


def test_planner_plans_within_a_macs_budget(planner: Planner) -> None:
    result = planner.select(macs=0.6)
    assert result.macs_fraction <= 0.6
    assert result.planned_macs == planner.macs(result.plan)
    low = trp_zoo.decompose(planner.model, "channel", rank=result.plan)
    assert result.planned_macs == trp_zoo.count_flops(low, INPUT)
    assert planner.select(macs=1.0).plan == {}


def test_trp_caps_each_planned_layer_at_its_rank(planner: Planner) -> None:
    plan = planner.select(macs=0.6).plan
    model = copy.deepcopy(planner.model)
    before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")
    }
    trp = trp_zoo.TRP(model, "channel", energy=1.0, plan=plan)
    assert set(trp.targets) == set(plan)
    assert trp.project() == plan  # full energy: the plan's cap decides
    sch = get_scheme("channel")
    for name, module in model.named_modules():
        if name in plan:
            matrix = sch.to_matrix(module.weight.detach()).double()
            assert int(torch.linalg.matrix_rank(matrix, rtol=1e-5)) <= plan[name]
        elif name in before:  # layers outside the plan are untouched
            assert torch.equal(module.weight, before[name]), name
    # an energy criterion below the cap still ranks lower
    trp = trp_zoo.TRP(copy.deepcopy(planner.model), "channel", energy=0.05, plan=plan)
    ranks = trp.project()
    assert all(ranks[n] <= plan[n] for n in plan) and any(ranks[n] < plan[n] for n in plan)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.2, "x", None, True])
def test_check_fraction_rejects_fractions_outside_0_1(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_fraction(bad, "latency")
    assert check_fraction(1, "latency") == 1.0 and check_fraction(0.5, "MACs") == 0.5


@pytest.mark.parametrize("budget", [{"latency": 0}, {"latency": 1.5}, {"macs": "x"}])
def test_plan_ranks_rejects_a_bad_budget_before_measuring(
    budget: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_timing(monkeypatch)
    monkeypatch.setattr(runtime.planner, "Planner", None)  # would fail if ever reached
    with pytest.raises(
        ValueError, match=r"budget must be a fraction of the dense model in \(0, 1\]"
    ):
        plan_ranks(tiny_net(), target(), **budget)


def test_planner_budget_errors(planner: Planner) -> None:
    with pytest.raises(ValueError, match="exactly one budget"):
        planner.select()
    with pytest.raises(ValueError, match="exactly one budget"):
        planner.select(latency=0.5, macs=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        planner.select(latency=1.5)
    with pytest.raises(ValueError, match="out of reach") as err:
        planner.select(latency=0.01)
    # the fraction the message suggests is within reach
    match = re.search(r"go down to about ([0-9.]+)", str(err.value))
    assert match is not None, err.value
    suggested = float(match.group(1))
    assert suggested >= reach(planner)
    assert planner.select(latency=suggested).predicted_fraction <= suggested + 1e-9


def test_the_suggested_fraction_is_within_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tgt, cache = tiny_net(), target(), CostCache(tmp_path / "costs")
    seed_cost_cache(model, tgt, cache=cache)
    no_timing(monkeypatch)
    saving = max_saving(Planner(model, tgt, cache=cache, **TIMING).options, "latency")
    # a dense latency the measured ranks can cut to 0.7849 of: shown as 0.79, not 0.78
    model_entry = {"p50_ms": saving / (1 - 0.7849), "runs": 1000}
    cache.put_model(tgt.resolve()[1], structure_key(model, INPUT), model_entry)
    planner = Planner(model, tgt, cache=cache, **TIMING)
    with pytest.raises(ValueError, match=r"go down to about 0\.79 of the dense model"):
        planner.select(latency=0.7)
    assert planner.select(latency=0.79).predicted_fraction <= 0.79


def test_layers_timed_alone_never_predict_more_saving_than_they_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At batch 1 a layer timed alone carries its call's fixed cost: the layers could sum to
    more than the whole model, and the fastest plans were predicted at or below zero ms."""
    model, tgt, cache = tiny_net(), target(), CostCache(tmp_path / "costs")
    seeded = seed_cost_cache(model, tgt, cache=cache)
    no_timing(monkeypatch)
    planner = Planner(model, tgt, cache=cache, **TIMING)
    layers = {n: seeded[n] for n in planner.table.layers}
    alone = sum(c.dense_ms for c in layers.values())
    fastest = sum(min(c.dense_ms, *c.rank_ms.values()) for c in layers.values())
    # a whole model as fast as the time its layers could save when timed alone
    model_entry = {"p50_ms": alone - fastest, "runs": 1000}
    cache.put_model(tgt.resolve()[1], structure_key(model, INPUT), model_entry)
    planner = Planner(model, tgt, cache=cache, **TIMING)
    lowest = planner.select(latency=reach(planner) + 1e-6, min_quotient=0)
    # every layer at its cheapest keeps that share of the layers' time, hence of the model's
    assert lowest.predicted_fraction == pytest.approx(fastest / alone, rel=1e-3)


def test_plan_ranks_reads_the_planners_cache(
    planner: Planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_timing(monkeypatch)
    result = plan_ranks(
        tiny_net(), target(), macs=0.6, cache_dir=planner.cache.root, runs=2, warmup=1
    )
    assert result.plan == planner.select(macs=0.6).plan
    assert result.dense_ms == planner.dense_ms


def test_planner_measures_plans_interleaved(planner: Planner) -> None:
    plan = planner.select(macs=0.6).plan
    stats = planner.measure({"planned": plan}, runs=2, warmup=1)
    assert set(stats) == {"dense", "planned"}
    assert all(s.runs == 2 and s.batch == 2 for s in stats.values())
    assert all(s.p50_ms <= s.p90_ms <= s.p99_ms for s in stats.values())
    with pytest.raises(ValueError, match="'dense' names the dense model"):
        planner.measure({"dense": plan})


def test_calibrate_corrects_the_budget_by_what_it_measures(
    planner: Planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole model saves half again what the layer tables predict (as where weights
    stream from memory): calibration asks for less, until the measurement is on target."""
    wanted = round((1.0 + 2 * reach(planner)) / 3, 3)  # well within reach

    def fake_measure(plans: dict[str, dict[str, int]], **_: Any) -> dict[str, LatencyStats]:
        predicted = planner.predicted_ms(plans["planned"])
        assert predicted is not None
        saving = 1.5 * (planner.dense_ms - predicted)
        return {
            "dense": LatencyStats.of([planner.dense_ms / 1e3], 2),
            "planned": LatencyStats.of([(planner.dense_ms - saving) / 1e3], 2),
        }

    monkeypatch.setattr(planner, "measure", fake_measure)
    plan, stats, history = planner.calibrate(wanted, tolerance=0.03, attempts=6)
    assert history[0]["budget"] == wanted and history[0]["measured"] < wanted * 0.97
    assert len(history) > 1 and history[-1]["budget"] > wanted  # it asked for less
    measured = stats["planned"].p50_ms / stats["dense"].p50_ms
    assert measured == pytest.approx(history[-1]["measured"])
    # the tiny net's few ranks may not land within 3%, but the miss shrinks
    assert abs(measured - wanted) < abs(history[0]["measured"] - wanted)
    assert plan.plan == planner.select(latency=history[-1]["budget"]).plan
    with pytest.raises(ValueError, match="attempts"):
        planner.calibrate(wanted, attempts=0)


# ----------------------------------------------------------------------------- the command line

CLI_MODEL, CLI_INPUT = "cifar_resnet20", (1, 28, 28)


def cli_model() -> nn.Module:
    """The model ``plan --model cifar_resnet20 --input-size 1 28 28`` builds (seed 0)."""
    torch.manual_seed(0)
    return timm.create_model(CLI_MODEL, in_chans=1).eval()


def plan_args(cache: Path, *extra: str) -> list[str]:
    return [
        "--model",
        CLI_MODEL,
        "--input-size",
        *map(str, CLI_INPUT),
        "--batch-size",
        "2",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--cache-dir",
        str(cache),
        "--quiet",
        *extra,
    ]


def test_cli_plan_writes_a_plan_that_rank_plan_and_decompose_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # synthetic cached costs: the plan is deterministic and no layer is timed
    cache = CostCache(tmp_path / "costs")
    seeded = seed_cost_cache(
        cli_model(), Target(batch_size=2, input_size=CLI_INPUT, threads=1), cache=cache
    )
    no_timing(monkeypatch, "measure_layer")  # whole models are timed, for --measure only
    out_file = tmp_path / "plan.json"
    rc = plan_main(plan_args(tmp_path / "costs", "--latency", "0.7", "--output", str(out_file)))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    candidates = [n for n, c in seeded.items() if c.rank_ms]
    assert re.search(r"\(0 timed, [1-9][0-9]* reused\)", printed.out), printed.out

    out = json.loads(out_file.read_text())
    plan = out["plan"]
    assert plan and set(plan) <= set(candidates)
    assert out["predicted"]["latency_fraction"] <= 0.7
    assert out["budget"] == {"kind": "latency", "fraction": 0.7}
    dense_ms = 1.1 * sum(c.dense_ms for c in seeded.values())
    assert out["predicted"]["dense_ms"] == pytest.approx(dense_ms)  # the seeded model latency
    assert {r["name"]: r["dense_ms"] for r in out["layers"]} == {
        n: seeded[n].dense_ms for n in candidates
    }
    for stats in (out["measured"]["dense"], out["measured"]["planned"]):  # timed for real
        assert stats["batch"] == 2 and stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    # --rank-plan reads the file as it is; decompose takes its plan
    assert load_rank_plan(str(out_file)) == plan
    validate(TrainConfig(rank_plan_file=str(out_file)))
    low = trp_zoo.decompose(cli_model(), "channel", rank=plan)
    assert trp_zoo.rank_plan(low) == plan
    factorized = {n for n, m in low.named_modules() if isinstance(m, FactorizedConv2d)}
    assert factorized == set(plan)


def test_cli_plan_calibrates_to_the_measured_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = CostCache(tmp_path / "costs")
    seed_cost_cache(cli_model(), Target(batch_size=2, input_size=CLI_INPUT, threads=1), cache=cache)
    no_timing(monkeypatch, "measure_layer")
    out_file = tmp_path / "plan.json"
    args = plan_args(tmp_path / "costs", "--latency", "0.7", "--calibrate", "2")
    assert plan_main([*args, "--output", str(out_file)]) == 0, capsys.readouterr().err
    out = json.loads(out_file.read_text())
    attempts = out["calibration"]
    assert 1 <= len(attempts) <= 2 and attempts[0]["budget"] == 0.7
    assert out["measured"]["latency_fraction"] == pytest.approx(attempts[-1]["measured"])
    assert plan_main(plan_args(tmp_path / "costs", "--macs", "0.6", "--calibrate", "2")) == 2
    assert "--calibrate corrects a --latency budget" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["1.5", "0", "-1"])
def test_cli_plan_rejects_a_bad_budget_without_measuring(
    budget: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    no_timing(monkeypatch)
    monkeypatch.setattr(runtime.plan, "Planner", None)  # never reached
    assert plan_main(plan_args(tmp_path / "costs", "--latency", budget)) == 2
    err = capsys.readouterr().err
    expected = (
        f"latency budget must be a fraction of the dense model in (0, 1], got {float(budget)}"
    )
    assert expected in err
    assert "Traceback" not in err and not (tmp_path / "costs").exists()
    with pytest.raises(SystemExit) as exit_info:
        plan_main(plan_args(tmp_path / "costs", "--latency", "x"))
    assert exit_info.value.code == 2 and "invalid float value" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--output", "DIR"], "--output DIR is a directory: give a file name, e.g. DIR/plan.json"),
        (
            ["--output", "/proc/plan.json"],
            "cannot write --output /proc/plan.json (No such file or directory): choose a "
            "writable path",
        ),
        (["--cache-dir", "FILE"], "--cache-dir FILE is a file, not a directory: move it"),
        (["--cache-dir", "/proc/costs"], "cannot create --cache-dir /proc/costs (No such file"),
        (["--calibrate", "-1"], "--calibrate must be >= 0, got -1"),
        (["--num-classes", "0"], "--num-classes must be >= 1, got 0 (omit it for timm's default)"),
        (["--rank-step", "0"], "--rank-step must be >= 1, got 0"),
        (["--max-candidates", "0"], "--max-candidates must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    ],
)
def test_cli_plan_refuses_bad_paths_and_counts_before_timing(
    extra: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An --output that cannot be written used to be a traceback after every layer was timed;
    --cache-dir a file a traceback; --calibrate -1 an error after timing; --num-classes 0
    was silently ignored."""
    no_timing(monkeypatch)
    monkeypatch.setattr(runtime.plan, "Planner", None)  # never reached
    (tmp_path / "file").write_text("x")
    swap = {"DIR": str(tmp_path), "FILE": str(tmp_path / "file")}
    extra = [swap.get(e, e) for e in extra]
    assert plan_main([*plan_args(tmp_path / "costs", "--latency", "0.7"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    for key, value in swap.items():
        expected = expected.replace(key, value)
    assert err.startswith("error: ") and expected in err and "\n" not in err


# ----------------------------------------------------------------------------- recipes


def recipe_config(*args: str) -> TrainConfig:
    defaults = TrainConfig(dataset="fashion_mnist")
    return config_from_args(defaults, build_parser(defaults).parse_args(list(args)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-latency", "0"], "--target-latency is a fraction of the dense latency"),
        (["--target-latency", "1.5"], "in (0, 1], got 1.5"),
        (["--target-latency", "0.8", "--rank-plan", "PLAN"], "not both"),
        (["--target-latency", "0.8", "--no-trp"], "it needs --trp"),
        (["--target-latency", "0.8", "--target-batch-size", "0"], "--target-batch-size"),
        (["--target-latency", "0.8", "--target-rank-step", "0"], "--target-rank-step"),
        (["--target-sensitivity-images", "8"], "prices a --target-latency plan: give both"),
        (
            ["--target-latency", "0.8", "--target-sensitivity-images", "-1"],
            "--target-sensitivity-images must be >= 0, got -1",
        ),
    ],
)
def test_recipe_target_latency_validation(args: list[str], message: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"layer1.0.conv1": 8}')
    args = [str(plan) if a == "PLAN" else a for a in args]
    with pytest.raises(ValueError, match=re.escape(message)):
        recipe_config(*args)


def test_recipe_target_latency_accepted() -> None:
    cfg = recipe_config("--target-latency", "0.8", "--target-batch-size", "2")
    assert cfg.target_latency == 0.8 and cfg.target_batch_size == 2 and cfg.trp


def test_recipe_rejects_a_bad_target_latency_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trp_zoo.train.recipe import run_recipe

    with pytest.raises(SystemExit) as exit_info:
        run_recipe(TrainConfig(), "test", ["--target-latency", "0", "--no-trp"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--target-latency is a fraction" in err and "it needs --trp" in err


def test_cli_plan_on_real_timing_of_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No synthetic costs: every layer is timed on ONNX Runtime, the tables are cached, and
    a second run reuses them all and picks the same plan."""
    args = plan_args(tmp_path / "costs", "--macs", "0.95", "--min-quotient", "0")
    args += ["--rank-step", "16", "--max-candidates", "2", "--threads", "1"]
    args += ["--output", str(tmp_path / "plan.json")]
    rc = plan_main(args)
    first = capsys.readouterr()
    assert rc == 0, first.err
    timed = re.search(r"\(([0-9]+) timed, 0 reused\)", first.out)
    assert timed and int(timed.group(1)) >= 1, first.out
    plan = json.loads((tmp_path / "plan.json").read_text())
    measured = plan["measured"]
    assert measured["dense"]["runs"] == measured["planned"]["runs"] == 2
    assert plan_main(args) == 0
    again = capsys.readouterr().out
    assert f"(0 timed, {timed.group(1)} reused)" in again, again
    assert json.loads((tmp_path / "plan.json").read_text())["plan"] == plan["plan"]


def test_cli_plan_ctrl_c_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.plan, "run", interrupted)
    assert plan_main(plan_args(tmp_path / "costs", "--latency", "0.7")) == 130
    assert capsys.readouterr().err == "interrupted: no plan written; rerun the command\n"


def test_cli_plan_refuses_model_options_with_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--weights and --num-classes were silently overridden by the checkpoint's own."""
    args = ["--checkpoint", str(tmp_path), "--latency", "0.7", "--cache-dir", str(tmp_path)]
    assert plan_main([*args, "--weights", "w.pth", "--num-classes", "5"]) == 2
    assert capsys.readouterr().err == (
        "error: --weights and --num-classes apply to --model; --checkpoint brings its own "
        "weights and classifier: drop them\n"
    )
