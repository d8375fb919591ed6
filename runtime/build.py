"""Build one engine from a PyTorch model or an ONNX file, reusing a saved engine when
nothing it depends on changed."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trp_zoo.fileio import sha256_file
from trp_zoo.paths import zoo_subdir

from .backends import get_backend
from .backends.base import Backend
from .engine import Engine
from .export import DEFAULT_OPSET, export_onnx, onnx_io
from .quantize import Calibration, quantize_qdq, scheme_for
from .spec import BuildOptions, EngineMetadata, check_input_size, save_metadata, stale_reason

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltEngine:
    """An engine file with its metadata, and whether this call (re)built it."""

    path: Path
    metadata: EngineMetadata
    rebuilt: bool
    reason: str  # why it was built, or why the saved one was reused


def default_timing_cache(backend_version: str, device: str) -> Path:
    """Per TensorRT version and GPU: ``$TRP_ZOO_HOME/tensorrt/timing-<version>-<gpu>.cache``."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{backend_version}-{device}").strip("-")
    return zoo_subdir("tensorrt") / f"timing-{slug}.cache"


def build_engine_file(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions,
    *,
    force: bool = False,
    backend: Backend | None = None,
) -> BuiltEngine:
    """Build ``engine_path`` from ``onnx_path`` unless a saved engine already matches.

    A saved engine is reused when its metadata sidecar records the same backend version,
    device, precision, ONNX SHA-256, input size and batch profile (int8: and the same
    quantization and calibration), and its bytes still match their recorded checksum;
    otherwise (or with ``force``) it is rebuilt. An int8 engine is built from the QDQ graph
    ``quantize_qdq`` writes next to it (``<engine name>.qdq.onnx``), calibrated with
    ``options.calibration``.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    backend = backend or get_backend(options.backend)
    input_name, output_name, size = onnx_io(onnx_path)
    calibration: Calibration | None = options.calibration
    wanted = EngineMetadata(
        backend=backend.name,
        backend_version=backend.version(),
        device=backend.device(),
        precision=options.precision,
        onnx_sha256=sha256_file(onnx_path),
        input_name=input_name,
        output_name=output_name,
        input_size=size,
        batch=options.profile,
        quantization=calibration.record(scheme_for(backend.name)) if calibration else {},
    )
    reason = "forced rebuild" if force else stale_reason(engine_path, wanted)
    if reason is None:
        logger.info(
            "reusing %s: built for the same ONNX, backend, device and settings", engine_path
        )
        return BuiltEngine(engine_path, wanted, False, "up to date")
    if backend.name == "tensorrt" and options.timing_cache is None:
        options = BuildOptions(
            **{
                **options.__dict__,
                "timing_cache": default_timing_cache(wanted.backend_version, wanted.device),
            }
        )
    logger.info("building %s (%s)", engine_path, reason)
    extra: dict[str, object] = {}
    if calibration is not None:
        qdq_path = engine_path.parent / (engine_path.name.split(".")[0] + ".qdq.onnx")
        extra = quantize_qdq(onnx_path, qdq_path, calibration, backend=backend.name)
        onnx_path = qdq_path
    extra.update(backend.build(onnx_path, engine_path, options))
    meta = EngineMetadata(
        **{**wanted.__dict__, "engine_sha256": sha256_file(engine_path), "extra": extra}
    )
    save_metadata(engine_path, meta)
    return BuiltEngine(engine_path, meta, True, reason)


def build(
    source: nn.Module | str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1, 8, 32),
    input_size: Sequence[int] | None = None,
    workspace_bytes: int = 4 << 30,
    timing_cache: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    spinning: bool = True,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    calibration: Calibration | None = None,
) -> Engine:
    """Build (or reuse) an engine for a PyTorch model or an ONNX file and load it.

    A model is first exported to ``<engine name>.onnx`` next to the engine (input size from
    ``input_size`` or the model's ``pretrained_cfg``); an export of the same model already
    there is reused. ``backend`` is ``auto``, ``tensorrt`` or ``onnxruntime``.
    ``precision="int8"`` needs ``calibration`` (training images, e.g.
    ``runtime.quantize.calibration_from_data(runtime.data.resolve_calibration_data(...))``).
    ``threads`` and ``spinning`` are how the engine is loaded (ONNX Runtime only): intra-op
    threads, and whether idle threads spin (the lowest latency on a dedicated machine; turn
    it off to time on a shared one).
    """
    engine_path = Path(engine_path)
    be = get_backend(backend, spinning=spinning)
    options = BuildOptions(
        backend=be.name,
        precision=precision,
        batch_sizes=tuple(batch_sizes),
        workspace_bytes=workspace_bytes,
        timing_cache=Path(timing_cache) if timing_cache else None,
        calibration=calibration,
    )
    if isinstance(source, nn.Module):
        size = check_input_size(input_size or model_input_size(source))
        onnx_path = engine_path.parent / (engine_path.name.split(".")[0] + ".onnx")
        if onnx_path == engine_path:
            raise ValueError(f"engine path {engine_path} would overwrite the exported ONNX file")
        export_onnx(source, onnx_path, size, opset=opset)
    else:
        onnx_path = Path(source)
    built = build_engine_file(onnx_path, engine_path, options, force=force, backend=be)
    return Engine.load(built.path, threads=threads, spinning=spinning)


def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` from the model's timm ``pretrained_cfg``; a clear error when absent."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if not size:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['input_size']; pass input_size=(C, H, W)"
        )
    return check_input_size(tuple(int(v) for v in size))
