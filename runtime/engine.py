"""``Engine``: a built engine (TensorRT plan or ONNX model) that runs on numpy or torch arrays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from trp_zoo.fileio import sha256_file

from .backends import get_backend
from .backends.base import Session
from .errors import EngineError, ExportError
from .export import onnx_io
from .spec import BatchProfile, EngineMetadata, metadata_path, read_metadata

REBUILD_HINT = "rebuild it with python -m runtime.build_engine"


class Engine:
    """A loaded inference engine with one image input ``(N, C, H, W)`` and one output.

    Load an engine file written by ``runtime.build`` / ``python -m runtime.build_engine``
    (its ``.json`` metadata sidecar says which backend), or any single-input ONNX model
    (run with ONNX Runtime).
    """

    def __init__(self, session: Session, meta: EngineMetadata, path: Path) -> None:
        self._session = session
        self.metadata = meta
        self.path = path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True
    ) -> Engine:
        """Load ``path``. ONNX Runtime only: ``threads`` intra-op threads (default: all CPUs),
        ``spinning`` whether idle threads spin (lowest latency on a dedicated machine)."""
        path = Path(path)
        if not path.is_file():
            raise EngineError(
                f"no engine file at {path}; build one with python -m runtime.build_engine"
            )
        meta = read_metadata(path)
        if meta is None:
            meta = _metadata_from_onnx(path)
        elif meta.engine_sha256 and meta.engine_sha256 != sha256_file(path):
            raise EngineError(
                f"{path} does not match the checksum recorded in {metadata_path(path).name} when "
                f"it was built: the file is corrupt or was modified; {REBUILD_HINT}"
            )
        backend = get_backend(meta.backend, spinning=spinning)
        return cls(backend.load(path, meta, threads), meta, path)

    @property
    def backend(self) -> str:
        return self.metadata.backend

    @property
    def input_name(self) -> str:
        return self.metadata.input_name

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.metadata.input_size

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """Smallest and largest batch the engine accepts (no upper limit on ONNX Runtime)."""
        if self.backend == "tensorrt":
            return self.metadata.batch.min, self.metadata.batch.max
        return 1, None

    @property
    def input_shapes(self) -> dict[str, tuple[int | str, ...]]:
        """``{input name: ("batch", C, H, W)}``."""
        return {self.input_name: ("batch", *self.input_size)}

    def _prepare(self, x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise EngineError(
                f"engine input must be a numpy array or torch tensor, got {type(x).__name__}"
            )
        c, h, w = self.input_size
        expected = f"(N, {c}, {h}, {w})"
        if x.ndim == 3 and tuple(x.shape) == self.input_size:
            raise EngineError(
                f"input has shape {tuple(x.shape)}, one image without a batch dimension; the "
                f"engine expects {expected}: pass x[None]"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_size:
            raise EngineError(
                f"input has shape {tuple(x.shape)}, but the engine expects {expected}; resize or "
                "crop the images to the model's input size (or rebuild with --input-size)"
            )
        lo, hi = self.batch_range
        if x.shape[0] < lo or (hi is not None and x.shape[0] > hi):
            raise EngineError(
                f"batch size {x.shape[0]} is outside the engine's optimization profile "
                f"[{lo}, {hi}]; split the batch or rebuild with --batch-sizes covering it"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise EngineError(
                f"input dtype is {x.dtype}; the engine expects float32 images, normalized with "
                "the model's mean and std"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    @overload
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    @overload
    def __call__(self, x: np.ndarray) -> np.ndarray: ...
    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Run one batch; returns the same array type as given (torch outputs on CPU)."""
        out = self._session.run(self._prepare(x))
        return torch.from_numpy(out) if isinstance(x, torch.Tensor) else out

    def timed(self, x: np.ndarray | torch.Tensor) -> float:
        """Run one batch and return its latency in seconds (CUDA events on TensorRT)."""
        return self._session.timed_run(self._prepare(x))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Engine({str(self.path)!r}, backend={self.backend}, precision="
            f"{self.metadata.precision}, input={self.input_shapes})"
        )


def _metadata_from_onnx(path: Path) -> EngineMetadata:
    if path.suffix != ".onnx":
        raise EngineError(
            f"{path} has no metadata sidecar ({metadata_path(path).name}); engines other than "
            f"ONNX models need it: {REBUILD_HINT}"
        )
    try:
        input_name, output_name, size = onnx_io(path)
    except ExportError as err:
        raise EngineError(str(err)) from None
    return EngineMetadata(
        backend="onnxruntime",
        backend_version="",
        device="",
        precision="fp32",
        onnx_sha256=sha256_file(path),
        input_name=input_name,
        output_name=output_name,
        input_size=size,
        batch=BatchProfile(1, 1, 1),
    )
