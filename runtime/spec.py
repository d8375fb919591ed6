"""What an engine is built for, and the metadata saved beside it.

Every engine file ``X`` has a sidecar ``X.json`` holding ``EngineMetadata``: the backend
and its version, the device, the precision, the SHA-256 of the ONNX file it was built
from, the input size and batch profile, and the SHA-256 of the engine bytes. An engine
is rebuilt when any of the build-relevant fields differ from what is asked now.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trp_zoo.fileio import sha256_file, write_json

from .errors import EngineError

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts: TensorRT's one optimization profile."""

    min: int
    opt: int
    max: int

    @classmethod
    def from_batch_sizes(cls, sizes: Iterable[int]) -> BatchProfile:
        """Cover every requested size; tune for the largest (throughput)."""
        values = sorted(set(sizes))
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(f"batch sizes must be positive ints, got {sorted(sizes)!r}")
        if values[0] < 1:
            raise ValueError(f"batch sizes must be >= 1, got {values}")
        return cls(min=values[0], opt=values[-1], max=values[-1])

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` with a clear error for anything else."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--batch-sizes takes comma-separated ints like 1,8,32, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes takes positive ints like 1,8,32, got {text!r}")
    return sorted(set(sizes))


@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine (shared by all backends; some fields are backend-specific)."""

    backend: str
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    workspace_bytes: int = 4 << 30  # TensorRT builder workspace limit
    timing_cache: Path | None = None  # TensorRT timing cache file, reused between builds
    # int8: the calibrated quantization (runtime.quantize.Calibration); None otherwise
    calibration: Any = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if (self.precision == "int8") != (self.calibration is not None):
            raise ValueError(
                "int8 engines need calibration images (a runtime.quantize.Calibration, e.g. "
                "--calibration-images N) and other precisions take none"
            )

    @property
    def profile(self) -> BatchProfile:
        return BatchProfile.from_batch_sizes(self.batch_sizes)


@dataclass(frozen=True)
class EngineMetadata:
    """Everything an engine file was built from and for."""

    backend: str
    backend_version: str
    device: str
    precision: str
    onnx_sha256: str
    input_name: str
    output_name: str
    input_size: tuple[int, int, int]
    batch: BatchProfile
    engine_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # int8: how it was quantized (scheme, calibration method, image count and data)
    quantization: dict[str, Any] = field(default_factory=dict)

    def build_key(self) -> dict[str, Any]:
        """The fields that, when any changes, make a saved engine stale."""
        return {
            "format_version": self.format_version,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "device": self.device,
            "precision": self.precision,
            "onnx_sha256": self.onnx_sha256,
            "input_size": list(self.input_size),
            "batch": asdict(self.batch),
            **({"quantization": self.quantization} if self.quantization else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineMetadata:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["batch"] = BatchProfile(**d["batch"])
        return cls(**d)


def metadata_path(engine_path: str | os.PathLike[str]) -> Path:
    """The sidecar file of an engine: ``<engine>.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def save_metadata(engine_path: str | os.PathLike[str], meta: EngineMetadata) -> Path:
    path = metadata_path(engine_path)
    write_json(path, meta.to_dict())
    return path


def read_metadata(engine_path: str | os.PathLike[str]) -> EngineMetadata | None:
    """The sidecar's metadata, or None when there is no sidecar."""
    path = metadata_path(engine_path)
    if not path.is_file():
        return None
    try:
        return EngineMetadata.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as err:
        raise EngineError(
            f"{path} is not valid engine metadata ({err}); delete it and the engine and rebuild "
            "with python -m runtime.build_engine"
        ) from err


def stale_reason(engine_path: str | os.PathLike[str], wanted: EngineMetadata) -> str | None:
    """Why ``engine_path`` must be (re)built for ``wanted``; None when it can be reused."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "no engine file yet"
    try:
        saved = read_metadata(engine_path)
    except EngineError as err:
        return str(err)
    if saved is None:
        return "the engine has no metadata sidecar"
    have, want = _flat(saved.build_key()), _flat(wanted.build_key())
    keys = list(want) + [k for k in have if k not in want]
    changed = [
        f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in keys if have.get(k) != want.get(k)
    ]
    if changed:
        return "changed since the last build: " + "; ".join(changed)
    if saved.engine_sha256 != sha256_file(engine_path):
        return "the engine file does not match the checksum recorded when it was built"
    return None


def _flat(key: dict[str, Any]) -> dict[str, Any]:
    """``{"quantization": {"calibration_method": ...}}`` -> ``{"quantization.calibration_method":
    ...}``, so a stale reason names the field that changed."""
    out: dict[str, Any] = {}
    for k, v in key.items():
        if isinstance(v, dict) and k == "quantization":
            out.update({f"{k}.{sub}": value for sub, value in v.items()})
        else:
            out[k] = v
    return out


def check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` input size."""
    values = tuple(input_size)
    if len(values) != 3 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"input size must be (C, H, W) with positive ints, got {values!r}")
    return (values[0], values[1], values[2])
