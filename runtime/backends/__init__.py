"""Engine backends: TensorRT (NVIDIA GPUs) and ONNX Runtime (CPU, or its CUDA provider).

``auto`` picks TensorRT where the ``tensorrt`` package and a CUDA GPU are present, else
ONNX Runtime.
"""

from __future__ import annotations

import importlib.util

from ..errors import BackendUnavailableError
from .base import Backend, Session
from .onnxruntime import OnnxRuntimeBackend

BACKENDS = ("auto", "tensorrt", "onnxruntime")
TENSORRT_HINT = (
    "install it with pip install -e '.[tensorrt]' (tensorrt>=10 and pycuda; TensorRT's pip "
    "packages download from NVIDIA's package index) on a machine with an NVIDIA GPU, or use "
    "--backend onnxruntime"
)


def tensorrt_unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"the tensorrt package is not installed: {TENSORRT_HINT}"
    try:
        import tensorrt
    except Exception as err:  # a broken install raises OSError/ImportError from its libraries
        return f"tensorrt fails to import ({err}): {TENSORRT_HINT}"
    if not hasattr(tensorrt, "Builder"):  # e.g. only the tensorrt-stubs type stubs are present
        return f"only type stubs of tensorrt are installed, not the library: {TENSORRT_HINT}"
    from .cuda import gpu_count

    if gpu_count() == 0:
        return (
            "no CUDA GPU is visible (or pycuda is missing); the TensorRT backend needs an NVIDIA "
            "GPU with its driver and pycuda. Use --backend onnxruntime on CPU-only machines"
        )
    return None


def resolve_backend_name(name: str) -> str:
    """``auto`` -> ``tensorrt`` or ``onnxruntime``; validates explicit names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "tensorrt" if tensorrt_unavailable_reason() is None else "onnxruntime"
    return name


def check_precision(backend: str, precision: str) -> None:
    """Refuse precisions a backend cannot build (ONNX Runtime engines are fp32 or int8)."""
    if backend == "onnxruntime" and precision not in ("fp32", "int8"):
        raise ValueError(
            f"precision {precision} needs the TensorRT backend; ONNX Runtime engines are fp32 "
            "or int8 (use --precision fp32, int8 or --backend tensorrt)"
        )


def get_backend(name: str, *, spinning: bool = True) -> Backend:
    """The backend object for ``name`` (``auto`` resolved); a clear error when unavailable."""
    resolved = resolve_backend_name(name)
    if resolved == "onnxruntime":
        return OnnxRuntimeBackend(spinning=spinning)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"TensorRT backend unavailable: {reason}")
    from .tensorrt import TensorRTBackend

    return TensorRTBackend()


__all__ = [
    "BACKENDS",
    "Backend",
    "Session",
    "check_precision",
    "get_backend",
    "resolve_backend_name",
    "tensorrt_unavailable_reason",
]
