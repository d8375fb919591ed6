"""The interface every backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..spec import BuildOptions, EngineMetadata


class Session(Protocol):
    """A loaded engine, ready to run batches of ``float32`` NCHW images."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one batch (``x`` already validated: C-contiguous float32)."""
        ...

    def timed_run(self, x: np.ndarray) -> float:
        """Run one batch and return the time it took in seconds, as the backend measures it."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Builds engine files from ONNX and loads them."""

    name: str
    engine_suffix: str

    def version(self) -> str: ...

    def device(self) -> str:
        """The device engines run on (GPU name, or the CPU)."""
        ...

    def build(self, onnx_path: Path, engine_path: Path, options: BuildOptions) -> dict[str, object]:
        """Write the engine for ``onnx_path`` to ``engine_path`` (atomically).

        Returns backend-specific facts for the metadata (``extra``).
        """
        ...

    def load(self, engine_path: Path, meta: EngineMetadata, threads: int | None) -> Session: ...
