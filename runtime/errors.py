"""Errors the runtime raises; each message names the problem and the fix.

They derive from ``trp_zoo.errors.ZooError``, the one root every command line catches;
data problems raise the library's ``DataError``.
"""

from __future__ import annotations

from trp_zoo.errors import DataError, ZooError


class RuntimeToolError(ZooError):
    """Base class of the runtime's own errors (engines, export, backends)."""


class EngineError(RuntimeToolError, ValueError):
    """An engine or ONNX file that cannot be used: corrupt, stale, or fed a wrong input."""


class ExportError(RuntimeToolError, RuntimeError):
    """ONNX export failed, or the exported graph does not match the PyTorch model."""


class BackendUnavailableError(RuntimeToolError, RuntimeError):
    """The requested backend (its package or its device) is not present on this machine."""


__all__ = ["BackendUnavailableError", "DataError", "EngineError", "ExportError", "RuntimeToolError"]
