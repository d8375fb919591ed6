"""Errors the runtime raises; each message names the problem and the fix."""

from __future__ import annotations


class RuntimeToolError(Exception):
    """Base class of the runtime's errors."""


class EngineError(RuntimeToolError, ValueError):
    """An engine or ONNX file that cannot be used: corrupt, stale, or fed a wrong input."""


class ExportError(RuntimeToolError, RuntimeError):
    """ONNX export failed, or the exported graph does not match the PyTorch model."""


class BackendUnavailableError(RuntimeToolError, RuntimeError):
    """The requested backend (its package or its device) is not present on this machine."""


class DataError(RuntimeToolError, ValueError):
    """The evaluation data cannot be found or does not fit the model."""
