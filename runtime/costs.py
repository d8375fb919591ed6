"""Per-layer cost tables: how long a layer and its factorized forms take on a target.

A *target* is where the model will run: backend, precision, batch size, input size and
threads. For every candidate conv and Linear of a model, ``cost_table`` times the dense
layer and its factorization at a grid of ranks, each as a small ONNX graph at the layer's
real input shape (one ``Conv`` or the scheme's two ``Conv`` nodes at the conv's input
height and width; one ``MatMul`` or two at the Linear's token count), built and run by
the runtime's own backends (``build_engine_file`` + ``Engine``) and timed interleaved
(``measure_interleaved``), so machine noise hits the dense and the factorized forms alike.
Medians are kept.

Results are cached on disk (``runtime.cost_cache``). A cached entry is reused when it
covers the requested ranks with at least the requested number of timed runs; otherwise
the layer is measured again (all ranks together, so they share one run). The target is
``runtime.target.Target``, the probe graphs ``runtime.probes``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from trp_zoo.algorithms.layers import Patterns, select_targets
from trp_zoo.lowrank.convs import ConvGeometry, is_plain
from trp_zoo.lowrank.linears import LayerKind
from trp_zoo.lowrank.schemes import get_scheme
from trp_zoo.lowrank.shapes import conv_shapes, linear_tokens

from .backends.base import Backend
from .build import build_engine_file
from .cost_cache import CostCache, LayerCosts, digest
from .engine import Engine
from .export import export_onnx, onnx_io
from .latency import LatencyStats, measure_interleaved
from .probes import LayerProbe, LinearProbe, Probe, candidate_ranks
from .quantize import random_calibration
from .report import load_average
from .spec import BuildOptions
from .target import PROBE_CALIBRATION_IMAGES, Target

Progress = Callable[[str], None] | None


def _engine(
    model: onnx.ModelProto | Path, name: str, workdir: Path, target: Target, backend: Backend
) -> Engine:
    if isinstance(model, onnx.ModelProto):
        onnx_path = workdir / f"{name}.onnx"
        onnx.save(model, str(onnx_path))
    else:
        onnx_path = model
    calibration = None
    if target.precision == "int8":
        calibration = random_calibration(onnx_io(onnx_path)[2], PROBE_CALIBRATION_IMAGES)
    options = BuildOptions(
        backend=backend.name,
        precision=target.precision,
        batch_sizes=(target.batch_size,),
        calibration=calibration,
    )
    built = build_engine_file(
        onnx_path, workdir / f"{name}{backend.engine_suffix}", options, backend=backend
    )
    return Engine.load(built.path, threads=target.threads, spinning=target.spinning)


def time_engines(
    engines: Mapping[str, Engine], batch: int, *, warmup: int, runs: int
) -> dict[str, LatencyStats]:
    """Latency of each engine at one batch size, timed interleaved; closes the engines."""
    try:
        return measure_interleaved(engines, [batch], warmup=warmup, runs=runs)[batch]
    finally:
        for engine in engines.values():
            engine.close()


def measure_layer(
    probe: Probe,
    ranks: Sequence[int],
    target: Target,
    *,
    backend: Backend | None = None,
    warmup: int = 3,
    runs: int = 15,
) -> LayerCosts:
    """Time the dense probe and its factorization at every rank, interleaved in one run."""
    backend = backend or target.resolve()[0]
    with tempfile.TemporaryDirectory(prefix="trp-probe-") as tmp:
        workdir = Path(tmp)
        engines = {
            "dense": _engine(
                probe.graph(None, opset=target.opset), "dense", workdir, target, backend
            )
        }
        for r in ranks:
            engines[str(r)] = _engine(
                probe.graph(r, opset=target.opset), f"r{r}", workdir, target, backend
            )
        load = load_average()
        stats = time_engines(engines, target.batch_size, warmup=warmup, runs=runs)
    ms = {name: s.p50_ms for name, s in stats.items()}
    return LayerCosts(
        dense_ms=ms.pop("dense"),
        rank_ms={int(r): v for r, v in ms.items()},
        runs=runs,
        warmup=warmup,
        load_average=load,
    )


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class LayerCost:
    """One layer of a cost table: its probe, candidate ranks and measured costs."""

    name: str
    probe: Probe
    ranks: tuple[int, ...]
    costs: LayerCosts

    def option_ms(self, rank: int) -> float:
        return self.costs.rank_ms[rank]


@dataclass
class CostTable:
    """Measured per-layer costs of one model on one target."""

    target: Target
    target_key: dict[str, Any]
    scheme: str
    layers: dict[str, LayerCost]
    measured: list[dict[str, Any]] = field(default_factory=list)  # probes timed by this call
    reused: list[dict[str, Any]] = field(default_factory=list)  # probes read from the cache

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target_key,
            "input_size": list(self.target.input_size),
            "scheme": self.scheme,
            "layers": {
                n: {"probe": lc.probe.key(), "costs": lc.costs.to_dict()}
                for n, lc in self.layers.items()
            },
        }


def conv_input_sizes(
    model: nn.Module, names: Iterable[str], input_size: Sequence[int]
) -> dict[str, tuple[int, int]]:
    """Input height and width of each named conv for one image of ``input_size``."""
    return {name: hw for name, (hw, _) in conv_shapes(model, names, input_size).items()}


def layer_probes(
    model: nn.Module,
    scheme: str,
    input_size: Sequence[int],
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    layers: LayerKind = "all",
) -> dict[str, Probe]:
    """A probe for each layer of kind ``layers`` (``conv``, ``linear`` or ``all``) that
    ``decompose`` would target (stem and classifier excluded as there; weight-standardized
    convs too): convs at their input size, Linears at their token count per image."""
    sch = get_scheme(scheme)
    targets = select_targets(model, include, exclude, layers=layers)
    convs = {n: m for n, m in targets.items() if isinstance(m, nn.Conv2d) and is_plain(m)}
    linears = [n for n, m in targets.items() if isinstance(m, nn.Linear)]
    sizes = conv_input_sizes(model, convs, input_size) if convs else {}
    tokens = linear_tokens(model, linears, input_size) if linears else {}
    probes: dict[str, Probe] = {}
    for name, layer in targets.items():
        if name in tokens:
            probes[name] = LinearProbe(ConvGeometry.of(layer), tokens[name])
        elif name in sizes:
            probes[name] = LayerProbe(sch.name, ConvGeometry.of(layer), sizes[name])
    return probes


def cost_table(
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
) -> CostTable:
    """Measure (or read from the cache) the cost of every candidate layer of ``model``.

    ``layers``: ``conv``, ``linear`` or ``all`` candidates (``layer_probes``). Layers with
    the same probe (scheme, geometry, input size or tokens) are measured once. A layer
    without any rank that lowers its MACs gets no candidates and stays dense.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    cache = cache or CostCache()
    backend, target_key = target.resolve()
    probes = layer_probes(
        model, scheme, target.input_size, include=include, exclude=exclude, layers=layers
    )
    table = CostTable(target, target_key, get_scheme(scheme).name, {})
    done: dict[str, LayerCosts] = {}
    for name, probe in probes.items():
        ranks = tuple(candidate_ranks(probe.scheme, probe.geom, rank_step, max_candidates))
        if not ranks:
            continue
        pkey = digest(probe.key())
        costs = done.get(pkey)
        if costs is None or not set(ranks) <= set(costs.rank_ms):
            cached = cache.layer(target_key, probe)
            if cached is not None and set(ranks) <= set(cached.rank_ms) and cached.runs >= runs:
                costs = cached
                table.reused.append(probe.key())
            else:
                wanted = sorted(set(ranks) | set(cached.rank_ms if cached else ()))
                if progress:
                    progress(f"timing {name}: {probe.describe()}, dense + {len(wanted)} ranks")
                costs = measure_layer(
                    probe, wanted, target, backend=backend, warmup=warmup, runs=runs
                )
                cache.put_layer(target_key, probe, costs)
                table.measured.append(probe.key())
            done[pkey] = costs
        table.layers[name] = LayerCost(name, probe, ranks, costs)
    return table


# ----------------------------------------------------------------------------- models


def structure_key(model: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
    """What a model's speed depends on: its structure (not its weights) and input size."""
    return {
        "structure": digest(f"{type(model).__qualname__}\n{model}"),
        "input_size": list(input_size),
    }


def model_latency(
    model: nn.Module,
    target: Target,
    *,
    cache: CostCache | None = None,
    workdir: str | os.PathLike[str] | None = None,
    warmup: int = 3,
    runs: int = 15,
    progress: Progress = None,
) -> float:
    """Median latency (ms) of the whole model on the target (cached by structure)."""
    cache = cache or CostCache()
    target_key = target.resolve()[1]
    key = structure_key(model, target.input_size)
    cached = cache.model(target_key, key)
    if cached is not None and int(cached.get("runs", 0)) >= runs:
        return float(cached["p50_ms"])
    if progress:
        progress("timing the dense model")
    stats = latencies({"model": model}, target, workdir=workdir, warmup=warmup, runs=runs)
    ms = stats["model"].p50_ms
    cache.put_model(
        target_key,
        key,
        {"p50_ms": ms, "runs": runs, "warmup": warmup, "load_average": load_average()},
    )
    return ms


def latencies(
    models: Mapping[str, nn.Module],
    target: Target,
    *,
    workdir: str | os.PathLike[str] | None = None,
    warmup: int = 3,
    runs: int = 15,
) -> dict[str, LatencyStats]:
    """Export, build and time whole models interleaved on the target."""
    backend, _ = target.resolve()
    with tempfile.TemporaryDirectory(prefix="trp-models-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        engines = {}
        for name, m in models.items():
            exported = export_onnx(
                m.eval(), folder / f"{name}.onnx", target.input_size, opset=target.opset
            )
            engines[name] = _engine(exported.path, name, folder, target, backend)
        return time_engines(engines, target.batch_size, warmup=warmup, runs=runs)
