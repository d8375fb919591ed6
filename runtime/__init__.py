"""trp-zoo runtime: ONNX export, TensorRT / ONNX Runtime engines, accuracy and speed checks.

python -m runtime.build_engine <zoo name | hub repo id | checkpoint dir> --output DIR
"""

from .build import BuiltEngine, build, build_engine_file
from .engine import Engine
from .errors import BackendUnavailableError, DataError, EngineError, ExportError
from .export import export_onnx
from .pipeline import RunConfig, build_and_check
from .report import to_markdown

__all__ = [
    "BackendUnavailableError",
    "BuiltEngine",
    "DataError",
    "Engine",
    "EngineError",
    "ExportError",
    "RunConfig",
    "build",
    "build_and_check",
    "build_engine_file",
    "export_onnx",
    "to_markdown",
]
