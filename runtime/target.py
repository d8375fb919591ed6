"""A deployment target: where a model will run, and the key its measurements are cached by.

int8 targets time every layer as ``runtime.quantize`` builds the model's engines: its
quantization scheme and the probes' calibration (random inputs: the scales do not change
the speed) are part of the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .backends import check_precision, get_backend
from .backends.base import Backend
from .cost_cache import FORMAT_VERSION
from .export import DEFAULT_OPSET
from .quantize import scheme_for
from .spec import PRECISIONS, check_input_size

# int8 targets: layer graphs are calibrated on random inputs (scales do not change speed)
PROBE_CALIBRATION_IMAGES = 8


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
