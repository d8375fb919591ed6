"""ONNX Runtime backend: CPU execution provider (CUDA where present), full graph optimizations.

"Building" saves the graph after ONNX Runtime's provider-independent (basic) optimizations
(constant folding, Conv+BatchNorm fusion, ...) as ``*.ort.onnx``; loading applies every
optimization level on top (operator fusions and the NCHWc blocked layout on CPU, which
are hardware-specific and therefore not saved).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import EngineError
from ..spec import BuildOptions, EngineMetadata


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def session_options(
    threads: int | None, *, level: str = "all", spinning: bool = True
) -> ort.SessionOptions:
    """Explicit settings: ``threads`` intra-op threads (default: all CPUs), one inter-op thread,
    sequential execution; ``level`` ``all`` or ``basic`` graph optimizations."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if level == "all"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


class OrtSession:
    """One ``onnxruntime.InferenceSession`` behind the runtime's ``Session`` interface."""

    def __init__(self, path: Path, threads: int | None, spinning: bool = True) -> None:
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(threads, spinning=spinning), providers=providers()
            )
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise EngineError(
                f"{path} could not be loaded by ONNX Runtime: {str(err).strip()[:300]}. The file "
                "is corrupt or not an ONNX model; rebuild it with python -m runtime.build_engine"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.threads = threads

    def run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(None, {self.input_name: x})[0]
        return out

    def timed_run(self, x: np.ndarray) -> float:
        start = time.perf_counter()
        self.session.run(None, {self.input_name: x})
        return time.perf_counter() - start

    def close(self) -> None:
        self.__dict__.pop("session", None)  # releases the session; closing twice is harmless


class OnnxRuntimeBackend:
    name = "onnxruntime"
    engine_suffix = ".ort.onnx"

    def __init__(self, spinning: bool = True) -> None:
        self.spinning = spinning

    def version(self) -> str:
        return str(ort.__version__)

    def device(self) -> str:
        provs = providers()
        return f"{provs[0]} ({cpu_name()})" if provs[0] == "CPUExecutionProvider" else provs[0]

    def build(self, onnx_path: Path, engine_path: Path, options: BuildOptions) -> dict[str, object]:
        from . import check_precision

        check_precision(self.name, options.precision)
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = engine_path.parent / f".{engine_path.name}.tmp-{uuid.uuid4().hex[:8]}"
        so = session_options(1, level="basic")
        so.optimized_model_filepath = str(tmp)
        try:
            ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            os.replace(tmp, engine_path)
        except Exception as err:
            tmp.unlink(missing_ok=True)
            raise EngineError(f"ONNX Runtime could not optimize {onnx_path}: {err}") from err
        return {"providers": providers(), "saved_optimization_level": "basic"}

    def load(self, engine_path: Path, meta: EngineMetadata, threads: int | None) -> OrtSession:
        return OrtSession(engine_path, threads, self.spinning)
