"""trp-zoo runtime: ONNX export, TensorRT / ONNX Runtime engines, accuracy and speed checks.

python -m runtime.build_engine <zoo name | hub repo id | checkpoint dir> --output DIR
"""

from .build import BuiltEngine, build, build_engine_file
from .engine import Engine
from .errors import BackendUnavailableError, DataError, EngineError, ExportError
from .export import export_onnx

__all__ = [
    "BackendUnavailableError",
    "BuiltEngine",
    "DataError",
    "Engine",
    "EngineError",
    "ExportError",
    "build",
    "build_engine_file",
    "export_onnx",
]
