"""Measured costs on disk, under ``$TRP_ZOO_HOME/costs``, keyed by everything that changes them.

One JSON file per (target, layer) or (target, model structure). The key holds the
backend, its version and device, precision (int8: the quantization scheme and the
probes' calibration), batch size, threads, thread spinning and
opset (the target, ``runtime.target``); the scheme, the layer's geometry and input size,
or for a Linear its features, bias and token count under ``"kind": "linear"`` (the probe,
``runtime.probes``); and ``FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trp_zoo.fileio import write_json
from trp_zoo.paths import zoo_subdir

if TYPE_CHECKING:
    from .probes import Probe

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$TRP_ZOO_HOME/costs`` (default ``~/.cache/trp_zoo/costs``)."""
    return zoo_subdir("costs")


@dataclass(frozen=True)
class LayerCosts:
    """Median latency (ms) of a dense layer and of its factorization at each measured rank."""

    dense_ms: float
    rank_ms: dict[int, float]
    runs: int
    warmup: int
    load_average: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rank_ms"] = {str(r): v for r, v in self.rank_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerCosts:
        return cls(
            dense_ms=float(d["dense_ms"]),
            rank_ms={int(r): float(v) for r, v in d["rank_ms"].items()},
            runs=int(d["runs"]),
            warmup=int(d["warmup"]),
            load_average=d.get("load_average"),
        )


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


class CostCache:
    """Measured costs on disk: ``<root>/<target hash>/<entry hash>.json`` (atomic writes).

    Each file repeats its full key, which is compared on read: a file whose key differs
    (or that cannot be parsed) counts as a miss and is overwritten by the next measurement.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _path(self, target_key: Mapping[str, Any], kind: str, key: Mapping[str, Any]) -> Path:
        folder = self.root / f"{target_key['backend']}-{digest(target_key)[:16]}"
        return folder / f"{kind}-{digest(key)[:24]}.json"

    def _read(
        self, target_key: Mapping[str, Any], kind: str, key: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        path = self._path(target_key, kind, key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("target") != dict(target_key):
            return None
        if entry.get("key") != dict(key):
            return None
        return entry

    def _write(
        self,
        target_key: Mapping[str, Any],
        kind: str,
        key: Mapping[str, Any],
        value: dict[str, Any],
    ) -> None:
        path = self._path(target_key, kind, key)
        if not (path.parent / "target.json").is_file():
            write_json(path.parent / "target.json", dict(target_key))
        write_json(path, {"target": dict(target_key), "key": dict(key), **value})

    def layer(self, target_key: Mapping[str, Any], probe: Probe) -> LayerCosts | None:
        entry = self._read(target_key, "layer", probe.key())
        try:
            return LayerCosts.from_dict(entry["costs"]) if entry else None
        except (KeyError, TypeError, ValueError):
            return None

    def put_layer(self, target_key: Mapping[str, Any], probe: Probe, costs: LayerCosts) -> None:
        self._write(target_key, "layer", probe.key(), {"costs": costs.to_dict()})

    def model(self, target_key: Mapping[str, Any], key: Mapping[str, Any]) -> dict[str, Any] | None:
        entry = self._read(target_key, "model", key)
        return entry.get("latency") if entry else None

    def put_model(
        self, target_key: Mapping[str, Any], key: Mapping[str, Any], latency: dict[str, Any]
    ) -> None:
        self._write(target_key, "model", key, {"latency": latency})
