"""Export a factorized model and its dense counterpart, build an engine for each, check
accuracy and interleaved latency, and write the report."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

import trp_zoo
from trp_zoo.algorithms.rank_alignment import pad_ranks
from trp_zoo.fileio import writable_dir_problem
from trp_zoo.lowrank.macs import CostComparison

from .backends import check_precision, get_backend
from .backends.base import Backend
from .build import BuiltEngine, build_engine_file, model_input_size
from .checks import GateResult, Gates, check_agreement, evaluate_gates
from .data import EvalData, resolve_calibration_data, resolve_eval_data
from .engine import Engine
from .errors import ExportError
from .export import DEFAULT_OPSET, ExportedModel, export_onnx
from .latency import LatencyStats, measure_interleaved
from .quantize import CALIBRATION_METHODS, Calibration, calibration_from_data
from .report import environment, summary_rows, write_report
from .sources import load_source
from .spec import PRECISIONS, BuildOptions, EngineMetadata, check_input_size

logger = logging.getLogger(__name__)

VARIANTS = ("dense", "factorized")


@dataclass(frozen=True)
class RunConfig:
    """Settings of one ``build_and_check`` run (the CLI's flags)."""

    backend: str = "auto"
    precision: str = "fp32"  # one precision or several, comma-separated: "fp32,int8"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    input_size: tuple[int, int, int] | None = None
    data: str | None = None  # see runtime.data.resolve_eval_data
    max_images: int | None = None
    warmup: int = 10
    runs: int = 50
    threads: int | None = None  # ONNX Runtime intra-op threads (default: all CPUs)
    spinning: bool = False  # ONNX Runtime thread spinning (erratic timings on shared CPUs)
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    opset: int = DEFAULT_OPSET
    pad_ranks: int = 16  # round ranks up to this multiple with zero components (same function)
    force: bool = False
    gates: Gates = field(default_factory=Gates)
    progress: bool = False
    record: bool = True  # write the speed-ups into the checkpoint (local directories only)
    # int8: calibration images from the training split of ``calibration_data`` (default:
    # of ``data``), the calibration method and module-path patterns kept in fp32
    calibration_images: int = 512
    calibration_method: str = "minmax"
    calibration_data: str | None = None
    keep_fp32: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse counts and limits that cannot work, before anything is loaded or built
        (``--runs 0`` used to fail only after both engines were built; ``--max-images -1``
        silently dropped one image and 0 meant all)."""
        problems = []
        if self.runs < 1:
            problems.append(f"--runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            problems.append(f"--warmup must be >= 0 (0: none), got {self.warmup}")
        if self.max_images is not None and self.max_images < 1:
            problems.append(
                f"--max-images must be >= 1, got {self.max_images} (omit it to evaluate all)"
            )
        if self.calibration_images < 1:
            problems.append(f"--calibration-images must be >= 1, got {self.calibration_images}")
        if self.workspace_bytes <= 0:
            problems.append("--workspace must be a positive number of GiB, e.g. 4")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions to build, in order (``precision`` split at commas)."""
        return parse_precisions(self.precision)


def parse_precisions(text: str) -> tuple[str, ...]:
    """``"fp32,int8"`` -> ``("fp32", "int8")``, with a clear error for anything else."""
    values = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in values if p not in PRECISIONS]
    if not values or bad:
        raise ValueError(
            f"--precision takes one or more of {', '.join(PRECISIONS)}, comma-separated "
            f"(e.g. fp32,int8), got {text!r}"
        )
    return values


def engine_stem(variant: str, precision: str) -> str:
    """File name stem of an engine: ``dense``, ``factorized`` (fp32), ``dense_int8``, ..."""
    return variant if precision == "fp32" else f"{variant}_{precision}"


def factorized_layers(model: nn.Module) -> list[dict[str, Any]]:
    """Each factorized layer of ``model``: name, kind (``conv`` or ``linear``), features
    in and out, and rank."""
    modules = dict(model.named_modules())
    rows = []
    for name, rank in trp_zoo.rank_plan(model).items():
        m = modules[name]
        linear = isinstance(m, trp_zoo.FactorizedLinear)
        rows.append(
            {
                "name": name,
                "kind": "linear" if linear else "conv",
                "in": m.in_features if linear else m.in_channels,
                "out": m.out_features if linear else m.out_channels,
                "rank": rank,
            }
        )
    return rows


def _model_summary(
    model: nn.Module, info: Mapping[str, Any], source: str, size: Sequence[int]
) -> dict[str, Any]:
    plan = trp_zoo.rank_plan(model)
    metrics = info.get("metrics") or {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "source": source,
        "architecture": info.get("base_architecture")
        or info.get("architecture")
        or cfg.get("architecture")
        or type(model).__name__,
        "scheme": trp_zoo.factorized_scheme(model),
        "factorized_layers": len(plan),
        "rank_plan": plan,
        "layers": factorized_layers(model),
        "num_classes": info.get("num_classes") or getattr(model, "num_classes", None),
        "input_size": list(size),
        "card": {k: metrics[k] for k in ("top1", "dataset", "split") if k in metrics},
    }


def _check_factorized_nodes(exports: Mapping[str, ExportedModel], factorized: nn.Module) -> None:
    """Each FactorizedConv2d must export as exactly two plain Conv nodes, and each
    FactorizedLinear as two MatMul/Gemm nodes."""
    modules = list(factorized.modules())
    expected = {
        "Conv": sum(isinstance(m, trp_zoo.FactorizedConv2d) for m in modules),
        "MatMul/Gemm": sum(isinstance(m, trp_zoo.FactorizedLinear) for m in modules),
    }
    for ops, layers in expected.items():
        dense, fact = (
            sum(exports[v].op_counts.get(op, 0) for op in ops.split("/"))
            for v in ("dense", "factorized")
        )
        if fact - dense != layers:
            raise ExportError(
                f"the factorized graph has {fact} {ops} nodes and the dense one {dense}; "
                f"expected {layers} more (two per factorized layer, one per dense one)"
            )


@dataclass
class _Prepared:
    """What the checks run on: both models, their input size, data and summary."""

    models: dict[str, nn.Module]
    size: tuple[int, int, int]
    summary: dict[str, Any]
    cost: CostComparison
    data: EvalData
    calibration: Calibration | None


def _prepare(
    model: nn.Module, info: Mapping[str, Any], source: str, config: RunConfig, backend: Backend
) -> _Prepared:
    """Both forms of the model, input size, evaluation and calibration data: everything
    that can be refused is checked here, before anything is exported."""
    factorized = model.eval()
    if config.pad_ranks > 1:
        factorized = pad_ranks(factorized, config.pad_ranks).eval()
    if not trp_zoo.rank_plan(factorized):
        raise ValueError(
            "the model has no factorized layers, so there is nothing to compare against its "
            "dense form; pass a trp-zoo checkpoint or a trp_zoo.decompose(...) result"
        )
    models = {"dense": trp_zoo.densify(factorized).eval(), "factorized": factorized}
    pretrained_cfg = dict(info.get("pretrained_cfg") or getattr(model, "pretrained_cfg", {}) or {})
    size = check_input_size(
        config.input_size or tuple(pretrained_cfg.get("input_size") or model_input_size(model))
    )
    summary = _model_summary(factorized, info, source, size)
    summary["ranks_padded_to_multiple_of"] = config.pad_ranks
    for precision in config.precisions:
        check_precision(backend.name, precision)
    if config.calibration_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, got "
            f"{config.calibration_method!r}"
        )
    data_config = {**pretrained_cfg, "input_size": size}
    hint = summary["card"].get("dataset")
    data = resolve_eval_data(
        config.data,
        input_size=size,
        data_config=data_config,
        dataset_hint=hint,
        max_images=config.max_images,
    )
    calibration = None
    if "int8" in config.precisions:
        calibration = calibration_from_data(
            resolve_calibration_data(
                config.calibration_data,
                eval_data=config.data,
                input_size=size,
                data_config=data_config,
                dataset_hint=hint,
                max_images=config.calibration_images,
            ),
            method=config.calibration_method,
            keep_fp32=config.keep_fp32,
        )
    cost = trp_zoo.compare_cost(models["dense"], factorized, size)
    return _Prepared(models, size, summary, cost, data, calibration)


def _build_engines(
    exports: Mapping[str, ExportedModel],
    out: Path,
    config: RunConfig,
    backend: Backend,
    calibration: Calibration | None,
) -> dict[tuple[str, str], BuiltEngine]:
    """Every (precision, variant) engine file, built or reused from ``out``."""
    built = {}
    for precision in config.precisions:
        options = BuildOptions(
            backend=backend.name,
            precision=precision,
            batch_sizes=config.batch_sizes,
            workspace_bytes=config.workspace_bytes,
            timing_cache=config.timing_cache,
            calibration=calibration if precision == "int8" else None,
        )
        for name in VARIANTS:
            built[precision, name] = build_engine_file(
                exports[name].path,
                out / f"{engine_stem(name, precision)}{backend.engine_suffix}",
                options,
                force=config.force,
                backend=backend,
            )
    return built


def _run_engines(
    built: Mapping[tuple[str, str], BuiltEngine], prep: _Prepared, config: RunConfig
) -> tuple[dict[str, Any], dict[int, dict[str, LatencyStats]]]:
    """Accuracy of every engine, and the latency of all of them timed interleaved."""
    precisions = config.precisions
    engines = {
        key: Engine.load(b.path, threads=config.threads, spinning=config.spinning)
        for key, b in built.items()
    }
    try:
        hi = engines[precisions[0], "factorized"].batch_range[1]  # TensorRT: the profile's max
        eval_batch = hi if hi is not None else max(64, *config.batch_sizes)
        accuracy = {
            p: _accuracy(
                {name: engines[p, name] for name in VARIANTS},
                prep.models,
                prep.data,
                eval_batch,
                prep.summary,
            )
            for p in precisions
        }
        timings = measure_interleaved(
            {f"{name}_{p}": engine for (p, name), engine in engines.items()},
            config.batch_sizes,
            warmup=config.warmup,
            runs=config.runs,
            progress=config.progress,
        )
    finally:
        for engine in engines.values():
            engine.close()
    return accuracy, timings


def _export_section(config: RunConfig, exports: Mapping[str, ExportedModel]) -> dict[str, Any]:
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": config.opset,
        **{
            name: {
                "path": str(e.path),
                "sha256": e.sha256,
                "conv_nodes": e.op_counts.get("Conv", 0),
                "matmul_nodes": e.op_counts.get("MatMul", 0) + e.op_counts.get("Gemm", 0),
                "max_abs_diff_vs_torch": e.max_abs_diff,
            }
            for name, e in exports.items()
        },
    }


def _backend_section(meta: EngineMetadata, config: RunConfig) -> dict[str, Any]:
    return {
        "name": meta.backend,
        "version": meta.backend_version,
        "device": meta.device,
        "precision": meta.precision,
        "precisions": list(config.precisions),
        "batch_profile": asdict(meta.batch),
        "threads": (config.threads or os.cpu_count()) if meta.backend == "onnxruntime" else None,
    }


def _gates(sections: Mapping[str, Mapping[str, Any]], config: RunConfig) -> list[GateResult]:
    """Every gate, applied to every precision built."""
    gates = []
    for p, section in sections.items():
        view = {**section, "latency": {"batches": section["latency"]}}
        for g in evaluate_gates(view, config.gates):
            gates.append(replace(g, message=f"{p}: {g.message}") if len(sections) > 1 else g)
    return gates


def build_and_check(
    model: nn.Module | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    config: RunConfig = RunConfig(),
    *,
    info: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Run the whole check for a factorized model; returns the report (also written).

    ``model`` is a model in memory, or a zoo name, hub repo id or checkpoint directory
    (loaded with ``trp_zoo.load`` and described by ``trp_zoo.model_info``). The dense
    counterpart is ``trp_zoo.densify(model)``: the same function with each factorized pair
    merged into one conv, so accuracy checks apply to both engines and the latency
    comparison is like for like. ``info`` is ``trp_zoo.model_info(source)`` for a model in
    memory that came from the zoo (input size, mean/std, the card's top-1 and data set).
    """
    if not isinstance(model, nn.Module):
        source = source or str(model)
        model, info = load_source(str(model))
    info = dict(info or {})
    out = Path(output_dir)
    checkpoint = Path(info["location"]) if info.get("location") else None
    if checkpoint and checkpoint.is_dir() and out.resolve().is_relative_to(checkpoint.resolve()):
        raise ValueError(
            f"--output {out} is inside the checkpoint {checkpoint}: engines and reports there "
            "would be published with it; choose a directory outside it"
        )
    if problem := writable_dir_problem(out, "--output"):
        raise ValueError(problem)
    backend = get_backend(config.backend, spinning=config.spinning)
    prep = _prepare(model, info, source or type(model).__name__, config, backend)
    exports = {
        name: export_onnx(m, out / f"{name}.onnx", prep.size, opset=config.opset)
        for name, m in prep.models.items()
    }
    _check_factorized_nodes(exports, prep.models["factorized"])
    built = _build_engines(exports, out, config, backend, prep.calibration)
    accuracy, timings = _run_engines(built, prep, config)

    precisions, cost = config.precisions, prep.cost
    sections = {
        p: _precision_section(p, built, exports, accuracy[p], timings, cost.macs_reduction)
        for p in precisions
    }
    meta = built[precisions[0], "factorized"].metadata
    first = sections[precisions[0]]
    report: dict[str, Any] = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": prep.summary,
        "cost": {
            **asdict(cost),
            "macs_reduction": cost.macs_reduction,
            "params_reduction": cost.params_reduction,
        },
        "export": _export_section(config, exports),
        "backend": _backend_section(meta, config),
        # the first precision's engines, accuracy and latency (every one's in "precisions")
        "engines": first["engines"],
        "accuracy": first["accuracy"],
        "latency": {
            "warmup": config.warmup,
            "runs": config.runs,
            "interleaved": True,
            "timer": "CUDA events around copy-in, execution and copy-out"
            if meta.backend == "tensorrt"
            else "wall clock around InferenceSession.run",
            "batches": first["latency"],
        },
        "precisions": sections,
        "rows": summary_rows(sections, cost.macs_reduction),
        "environment": environment(),
    }
    gates = _gates(sections, config)
    report["gates"] = [asdict(g) for g in gates]
    report["passed"] = all(g.passed for g in gates)
    if config.record and info.get("origin") in ("directory", "local-store"):
        report["recorded_in"] = str(_record_speedups(Path(info["location"]), report))
    write_report(out, report)
    return report


def _record_speedups(checkpoint: Path, report: Mapping[str, Any]) -> Path:
    """Add the measured speed-ups to a local checkpoint's results and model card."""
    backend = report["backend"]
    device = backend["device"]
    if backend["name"] == "onnxruntime":
        device = f"{device}, {backend['threads']} threads"
    return trp_zoo.record_speedups(
        checkpoint,
        [
            {
                "value": round(b["speedup"], 3),
                "backend": f"{backend['name']} {backend['version']}",
                "device": device,
                "batch_size": b["batch"],
                "precision": p,
                "dense_latency_ms": round(b["dense"]["p50_ms"], 3),
                "latency_ms": round(b["factorized"]["p50_ms"], 3),
                "macs_reduction": round(b["macs_reduction"], 3),
                "command": "python -m runtime.build_engine",
                "date": report["created"][:10],
            }
            for p, section in report["precisions"].items()
            for b in section["latency"]
        ],
    )


def _precision_section(
    precision: str,
    built: Mapping[tuple[str, str], Any],
    exports: Mapping[str, ExportedModel],
    accuracy: dict[str, Any],
    timings: Mapping[int, Mapping[str, Any]],
    macs_reduction: float,
) -> dict[str, Any]:
    """One precision's engines, accuracy and latency rows (factorized vs dense)."""
    meta = built[precision, "factorized"].metadata
    engines = {}
    for name in VARIANTS:
        b = built[precision, name]
        engines[name] = {
            "path": str(b.path),
            "onnx": str(b.metadata.extra.get("qdq_onnx", exports[name].path)),
            "rebuilt": b.rebuilt,
            "reason": b.reason,
        }
    batches = []
    for batch, stats in timings.items():
        dense, fact = stats[f"dense_{precision}"], stats[f"factorized_{precision}"]
        batches.append(
            {
                "batch": batch,
                "dense": dense.to_dict(),
                "factorized": fact.to_dict(),
                "speedup": dense.p50_ms / fact.p50_ms,
                "macs_reduction": macs_reduction,
                "realized_fraction": dense.p50_ms / fact.p50_ms / macs_reduction,
            }
        )
    return {
        "precision": precision,
        "quantization": meta.quantization or None,
        "engines": engines,
        "accuracy": accuracy,
        "latency": batches,
    }


def _accuracy(
    engines: Mapping[str, Engine],
    models: Mapping[str, nn.Module],
    data: EvalData,
    batch_size: int,
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    notes = []
    if not data.labelled:
        notes.append(
            "no labelled evaluation data: agreement with PyTorch was checked on random inputs "
            "and the labelled top-1 check was skipped (pass --data for it)"
        )
    card_top1 = summary["card"].get("top1")
    if data.labelled and card_top1 is None:
        notes.append("the model card records no top-1, so engine top-1 is not compared to it")
    return {
        "data": data.description,
        "labelled": data.labelled,
        "card_top1": card_top1,
        "engines": {
            name: check_agreement(
                engines[name], models[name], data, batch_size=batch_size
            ).to_dict()
            for name in VARIANTS
        },
        "notes": notes,
    }
