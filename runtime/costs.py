"""Per-layer cost tables: how long a conv and its factorized forms take on a target.

A *target* is where the model will run: backend, precision, batch size, input size and
threads. For every candidate conv of a model, ``cost_table`` times the dense conv and its
factorization at a grid of ranks, each as a small ONNX graph at the layer's real input
shape (one ``Conv``, or the scheme's two ``Conv`` nodes), built and run by the runtime's
own backends (``build_engine_file`` + ``Engine``) and timed interleaved
(``measure_interleaved``), so machine noise hits the dense and the factorized forms alike.
Medians are kept.

Results are cached on disk, one JSON file per (target, layer) under
``$TRP_ZOO_HOME/costs`` (default ``~/.cache/trp_zoo/costs``). The key holds everything that
changes the numbers: the backend, its version and device, precision (int8: the
quantization scheme of ``runtime.quantize`` and the probes' calibration), batch size,
threads, thread spinning and opset (the target); the scheme, the conv's geometry and its input
height and width (the layer); and this module's format version. A cached entry is reused
when it covers the requested ranks with at least the requested number of timed runs;
otherwise the layer is measured again (all ranks together, so they share one run).

Weights of the probe graphs are random: fp32 kernels run at the same speed whatever
their values (int8 probes are quantized like the model's engines, calibrated on random
inputs: the scales do not change the speed). Padding modes other than zeros become a
``Pad`` node (``circular`` is timed as ``edge``, which moves the same data); timm's
dynamic 'same' padding becomes the static padding it computes for this input size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from trp_zoo.convs import ConvGeometry, is_plain
from trp_zoo.fileio import write_json
from trp_zoo.schemes import Scheme, get_scheme
from trp_zoo.store import zoo_home
from trp_zoo.targets import Patterns, select_targets

from .backends import check_precision, get_backend
from .backends.base import Backend
from .build import build_engine_file
from .engine import Engine
from .export import DEFAULT_OPSET, export_onnx, onnx_io
from .latency import LatencyStats, measure_interleaved
from .quantize import random_calibration, scheme_for
from .report import load_average
from .shapes import conv_shapes
from .spec import PRECISIONS, BuildOptions, check_input_size

FORMAT_VERSION = 1
PROBE_INPUT = "input"
# int8 targets: layer graphs are calibrated on random inputs (scales do not change speed)
PROBE_CALIBRATION_IMAGES = 8
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "edge"}

Progress = Callable[[str], None] | None


def default_cache_dir() -> Path:
    """``$TRP_ZOO_HOME/costs`` (default ``~/.cache/trp_zoo/costs``)."""
    return zoo_home() / "costs"


# ----------------------------------------------------------------------------- target


@dataclass(frozen=True)
class Target:
    """Where a model will run: the settings its cost tables are measured for."""

    backend: str = "onnxruntime"
    batch_size: int = 8
    input_size: tuple[int, int, int] = (3, 224, 224)
    precision: str = "fp32"
    threads: int | None = 1  # ONNX Runtime intra-op threads (None: all CPUs)
    spinning: bool = False  # ONNX Runtime thread spinning (off on shared machines)
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", check_input_size(tuple(self.input_size)))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ValueError(f"batch size must be a positive int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for all CPUs), got {self.threads}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )

    def resolve(self) -> tuple[Backend, dict[str, Any]]:
        """The backend object and the cache key of this target on this machine."""
        backend = get_backend(self.backend, spinning=self.spinning)
        check_precision(backend.name, self.precision)
        cpu_threads = backend.name == "onnxruntime"
        key = {
            "format": FORMAT_VERSION,
            "backend": backend.name,
            "backend_version": backend.version(),
            "device": backend.device(),
            "precision": self.precision,
            "batch_size": self.batch_size,
            "threads": (self.threads or os.cpu_count() or 1) if cpu_threads else None,
            "spinning": self.spinning if cpu_threads else None,
            "opset": self.opset,
        }
        if self.precision == "int8":  # layers are timed as runtime.quantize builds them
            key["quantization"] = {
                **scheme_for(backend.name),
                "calibration": f"minmax on {PROBE_CALIBRATION_IMAGES} random N(0, 1) inputs",
            }
        return backend, key


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ConvSpec:
    """One ONNX ``Conv`` of a probe graph (pads as ONNX orders them: top, left, bottom, right)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    bias: bool
    pad_mode: str  # "zeros" or an ONNX Pad mode applied before the conv
    in_hw: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        top, left, bottom, right = self.pads
        (h, w), (kh, kw), (dh, dw) = self.in_hw, self.kernel, self.dilation
        h_span = h + top + bottom - dh * (kh - 1) - 1
        w_span = w + left + right - dw * (kw - 1) - 1
        return h_span // self.stride[0] + 1, w_span // self.stride[1] + 1

    @property
    def macs(self) -> int:
        """Multiply-adds per image."""
        kh, kw = self.kernel
        h, w = self.out_hw
        return self.out_channels * self.in_channels * kh * kw * h * w


def _same_pads(kernel: int, stride: int, dilation: int, size: int) -> tuple[int, int]:
    """timm's ``pad_same``: the padding TF's 'SAME' needs for this input size."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # PyTorch's 'same' (stride 1): the extra pixel goes at the end
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    ph, pw = (int(v) for v in conv.padding)
    return (ph, pw, ph, pw)


def _spec(conv: nn.Conv2d, in_hw: tuple[int, int], pads: tuple[int, int, int, int] | None):
    return ConvSpec(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel=(conv.kernel_size[0], conv.kernel_size[1]),
        stride=(conv.stride[0], conv.stride[1]),
        pads=pads if pads is not None else _pads(conv, in_hw),
        dilation=(conv.dilation[0], conv.dilation[1]),
        bias=conv.bias is not None,
        pad_mode=_PAD_MODES.get(conv.padding_mode, "zeros"),
        in_hw=in_hw,
    )


@dataclass(frozen=True)
class LayerProbe:
    """A conv to time in isolation: its scheme, geometry and input height and width."""

    scheme: str
    geom: ConvGeometry
    input_hw: tuple[int, int]

    def describe(self) -> str:
        """``in->out kxk/stride @HxW``."""
        g = self.geom
        kh, kw = g.kernel_size
        return (
            f"{g.in_channels}->{g.out_channels} {kh}x{kw}/{g.stride[0]} "
            f"@{self.input_hw[0]}x{self.input_hw[1]}"
        )

    def key(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "geometry": self.geom.to_dict(),
            "input_hw": list(self.input_hw),
        }

    def _dense_conv(self) -> nn.Conv2d:
        g = self.geom
        return nn.Conv2d(
            g.in_channels,
            g.out_channels,
            g.kernel_size,
            stride=g.stride,
            padding=(0, 0) if g.dynamic_same else g.padding,
            dilation=g.dilation,
            bias=True,  # batch norm folds into a bias at export
            padding_mode=g.padding_mode,
        )

    def _dynamic_pads(self) -> tuple[int, int, int, int] | None:
        g = self.geom
        if not g.dynamic_same:
            return None
        top, bottom = _same_pads(g.kernel_size[0], g.stride[0], g.dilation[0], self.input_hw[0])
        left, right = _same_pads(g.kernel_size[1], g.stride[1], g.dilation[1], self.input_hw[1])
        return (top, left, bottom, right)

    def convs(self, rank: int | None) -> list[ConvSpec]:
        """The ``Conv`` nodes of the dense layer (``rank=None``) or of its factorization."""
        dynamic = self._dynamic_pads()
        with torch.device("meta"):  # shapes only: no weights are allocated
            if rank is None:
                return [_spec(self._dense_conv(), self.input_hw, dynamic)]
            first, second = get_scheme(self.scheme).layers(self.geom, rank)
        a = _spec(first, self.input_hw, dynamic)
        b = _spec(second, a.out_hw, None)
        return [a, ConvSpec(**{**asdict(b), "bias": True})]

    def macs(self, rank: int | None) -> int:
        """Multiply-adds per image of the dense layer or its rank-``rank`` factorization."""
        return sum(c.macs for c in self.convs(rank))

    def graph(self, rank: int | None, batch: int | str = "batch", opset: int = DEFAULT_OPSET):
        """The probe as an ONNX model: input ``(batch, C, H, W)``, one output."""
        rng = np.random.default_rng(0)
        nodes, inits = [], []
        x = PROBE_INPUT
        convs = self.convs(rank)
        for i, c in enumerate(convs):
            if c.pad_mode != "zeros":
                pads = np.array([0, 0, c.pads[0], c.pads[1], 0, 0, c.pads[2], c.pads[3]])
                inits.append(numpy_helper.from_array(pads.astype(np.int64), f"pads{i}"))
                nodes.append(
                    helper.make_node("Pad", [x, f"pads{i}"], [f"padded{i}"], mode=c.pad_mode)
                )
                x = f"padded{i}"
            fan_in = c.in_channels * c.kernel[0] * c.kernel[1]
            w = rng.standard_normal((c.out_channels, c.in_channels, *c.kernel), dtype=np.float32)
            inits.append(numpy_helper.from_array(w / np.float32(math.sqrt(fan_in)), f"w{i}"))
            inputs = [x, f"w{i}"]
            if c.bias:
                inits.append(numpy_helper.from_array(np.zeros(c.out_channels, np.float32), f"b{i}"))
                inputs.append(f"b{i}")
            out = f"y{i}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    kernel_shape=list(c.kernel),
                    strides=list(c.stride),
                    dilations=list(c.dilation),
                    pads=[0, 0, 0, 0] if c.pad_mode != "zeros" else list(c.pads),
                )
            )
            x = out
        shape = [batch, self.geom.in_channels, *self.input_hw]
        graph = helper.make_graph(
            nodes,
            "probe",
            [helper.make_tensor_value_info(PROBE_INPUT, TensorProto.FLOAT, shape)],
            [
                helper.make_tensor_value_info(
                    x, TensorProto.FLOAT, [batch, convs[-1].out_channels, *convs[-1].out_hw]
                )
            ],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 10)  # readable by older runtimes
        onnx.checker.check_model(model)
        return model


def candidate_ranks(
    scheme: str | Scheme, geom: ConvGeometry, step: int = 8, limit: int = 32
) -> list[int]:
    """Ranks worth timing: multiples of ``step`` that lower the layer's MACs.

    When there are more than ``limit`` of them the step doubles (8, 16, 32, ...) until they
    fit, so large layers are sampled on coarser, still aligned, multiples.
    """
    if step < 1 or limit < 1:
        raise ValueError(f"rank step and candidate limit must be >= 1, got {step} and {limit}")
    top = get_scheme(scheme).max_useful_rank(geom)
    while top // step > limit:
        step *= 2
    return list(range(step, top + 1, step))


# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class LayerCosts:
    """Median latency (ms) of a dense layer and of its factorization at each measured rank."""

    dense_ms: float
    rank_ms: dict[int, float]
    runs: int
    warmup: int
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rank_ms"] = {str(r): v for r, v in self.rank_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerCosts:
        return cls(
            dense_ms=float(d["dense_ms"]),
            rank_ms={int(r): float(v) for r, v in d["rank_ms"].items()},
            runs=int(d["runs"]),
            warmup=int(d["warmup"]),
            load_average=d.get("load_average"),
        )


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
    probe: LayerProbe,
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


# ----------------------------------------------------------------------------- the cache


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class CostCache:
    """Measured costs on disk: ``<root>/<target hash>/<entry hash>.json`` (atomic writes).

    Each file repeats its full key, which is compared on read: a file whose key differs
    (or that cannot be parsed) counts as a miss and is overwritten by the next measurement.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _path(self, target_key: Mapping[str, Any], kind: str, key: Mapping[str, Any]) -> Path:
        folder = self.root / f"{target_key['backend']}-{_digest(target_key)[:16]}"
        return folder / f"{kind}-{_digest(key)[:24]}.json"

    def _read(
        self, target_key: Mapping[str, Any], kind: str, key: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        path = self._path(target_key, kind, key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("target") != dict(target_key):
            return None
        if entry.get("key") != dict(key):
            return None
        return entry

    def _write(
        self,
        target_key: Mapping[str, Any],
        kind: str,
        key: Mapping[str, Any],
        value: dict[str, Any],
    ) -> None:
        path = self._path(target_key, kind, key)
        if not (path.parent / "target.json").is_file():
            write_json(path.parent / "target.json", dict(target_key))
        write_json(path, {"target": dict(target_key), "key": dict(key), **value})

    def layer(self, target_key: Mapping[str, Any], probe: LayerProbe) -> LayerCosts | None:
        entry = self._read(target_key, "layer", probe.key())
        try:
            return LayerCosts.from_dict(entry["costs"]) if entry else None
        except (KeyError, TypeError, ValueError):
            return None

    def put_layer(
        self, target_key: Mapping[str, Any], probe: LayerProbe, costs: LayerCosts
    ) -> None:
        self._write(target_key, "layer", probe.key(), {"costs": costs.to_dict()})

    def model(self, target_key: Mapping[str, Any], key: Mapping[str, Any]) -> dict[str, Any] | None:
        entry = self._read(target_key, "model", key)
        return entry.get("latency") if entry else None

    def put_model(
        self, target_key: Mapping[str, Any], key: Mapping[str, Any], latency: dict[str, Any]
    ) -> None:
        self._write(target_key, "model", key, {"latency": latency})


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class LayerCost:
    """One layer of a cost table: its probe, candidate ranks and measured costs."""

    name: str
    probe: LayerProbe
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
) -> dict[str, LayerProbe]:
    """A probe for each conv ``decompose`` would target (weight-standardized convs excluded)."""
    sch = get_scheme(scheme)
    targets = {n: c for n, c in select_targets(model, include, exclude).items() if is_plain(c)}
    sizes = conv_input_sizes(model, targets, input_size)
    return {n: LayerProbe(sch.name, ConvGeometry.of(c), sizes[n]) for n, c in targets.items()}


def cost_table(
    model: nn.Module,
    target: Target,
    scheme: str = "channel",
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    cache: CostCache | None = None,
    rank_step: int = 8,
    max_candidates: int = 32,
    warmup: int = 3,
    runs: int = 15,
    progress: Progress = None,
) -> CostTable:
    """Measure (or read from the cache) the cost of every candidate layer of ``model``.

    Layers with the same probe (scheme, geometry, input size) are measured once. A layer
    without any rank that lowers its MACs gets no candidates and stays dense.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    cache = cache or CostCache()
    backend, target_key = target.resolve()
    probes = layer_probes(model, scheme, target.input_size, include=include, exclude=exclude)
    table = CostTable(target, target_key, get_scheme(scheme).name, {})
    done: dict[str, LayerCosts] = {}
    for name, probe in probes.items():
        ranks = tuple(candidate_ranks(scheme, probe.geom, rank_step, max_candidates))
        if not ranks:
            continue
        pkey = _digest(probe.key())
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
        "structure": _digest(f"{type(model).__qualname__}\n{model}"),
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


__all__ = [
    "ConvSpec",
    "CostCache",
    "CostTable",
    "LayerCost",
    "LayerCosts",
    "LayerProbe",
    "Target",
    "candidate_ranks",
    "conv_input_sizes",
    "cost_table",
    "default_cache_dir",
    "latencies",
    "layer_probes",
    "measure_layer",
    "model_latency",
    "structure_key",
]
