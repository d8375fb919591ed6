"""The measured numbers a checkpoint carries, validated, with how each was measured.

A checkpoint's ``results.json`` holds the metrics its recipe measured (top-1, MACs,
parameters, dense baselines), the speed-ups a runtime measured, and provenance (recipe,
command, data, date, software versions). Nothing here makes a number up: every value comes
from the caller, except MACs and parameters, which ``save_pretrained`` counts on the model
it writes.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..environment import software_versions

RESULTS_FORMAT = "trp-zoo-results/1"

Kind = Literal["percent", "count", "ratio"]


@dataclass(frozen=True)
class MetricSpec:
    """A known metric: its model-index type, a readable name, and what values are valid."""

    metric_type: str
    name: str
    kind: Kind


METRICS: dict[str, MetricSpec] = {
    "top1": MetricSpec("accuracy", "Top-1 accuracy (%)", "percent"),
    "top5": MetricSpec("top_5_accuracy", "Top-5 accuracy (%)", "percent"),
    "dense_top1": MetricSpec("dense_accuracy", "Dense baseline top-1 accuracy (%)", "percent"),
    "dense_top5": MetricSpec(
        "dense_top_5_accuracy", "Dense baseline top-5 accuracy (%)", "percent"
    ),
    "direct_decompose_top1": MetricSpec(
        "direct_decompose_accuracy",
        "Top-1 of the dense model decomposed at the same ranks without TRP (%)",
        "percent",
    ),
    "macs": MetricSpec("macs", "MACs per image", "count"),
    "dense_macs": MetricSpec("dense_macs", "Dense baseline MACs per image", "count"),
    "macs_reduction": MetricSpec("macs_reduction", "MACs reduction vs dense (x)", "ratio"),
    "params": MetricSpec("params", "Parameters", "count"),
    "dense_params": MetricSpec("dense_params", "Dense baseline parameters", "count"),
    "params_reduction": MetricSpec("params_reduction", "Parameter reduction vs dense (x)", "ratio"),
}
TEXT_FIELDS = ("dataset", "split")
SPEEDUP_REQUIRED = ("value", "backend", "device")


def _check_number(key: str, value: Any, kind: Kind) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"metrics[{key!r}] must be a finite number, got {value!r}")
    if kind == "percent" and not 0 <= value <= 100:
        raise ValueError(f"metrics[{key!r}] = {value} is not a percentage in [0, 100]")
    if kind == "count":
        if int(value) != value or value <= 0:
            raise ValueError(f"metrics[{key!r}] must be a positive whole number, got {value!r}")
        return int(value)
    if kind == "ratio" and value <= 0:
        raise ValueError(f"metrics[{key!r}] must be positive, got {value!r}")
    return float(value)


def _check_json(where: str, value: Any) -> None:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must be JSON-serializable: {err}") from None


def validate_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check known metrics' types and ranges; other keys pass through if JSON-serializable."""
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if key in METRICS:
            out[key] = _check_number(key, value, METRICS[key].kind)
        elif key in TEXT_FIELDS:
            if not isinstance(value, str) or not value:
                raise ValueError(f"metrics[{key!r}] must be a non-empty string, got {value!r}")
            out[key] = value
        else:
            _check_json(f"metrics[{key!r}]", value)
            out[key] = value
    return out


def check_ratio(metrics: dict[str, Any], ratio: str, dense: str, value: str) -> None:
    """Fill ``ratio = dense / value`` from measured numbers, or check a given one against them."""
    if dense not in metrics or value not in metrics:
        return
    derived = metrics[dense] / metrics[value]
    if ratio not in metrics:
        metrics[ratio] = derived
    elif not math.isclose(metrics[ratio], derived, rel_tol=1e-3):
        raise ValueError(
            f"metrics[{ratio!r}] = {metrics[ratio]} disagrees with {dense} / {value} = "
            f"{derived:.4g}; pass consistent numbers or leave {ratio!r} out (it is then derived)"
        )


def validate_speedups(speedups: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Each speed-up needs ``value`` (dense time / factorized time), ``backend`` and ``device``.

    Optional keys (``batch_size``, ``precision``, ``latency_ms``, ``dense_latency_ms``,
    ``command``, ``date``, ...) are kept as given.
    """
    out = []
    for i, entry in enumerate(speedups or ()):
        missing = [k for k in SPEEDUP_REQUIRED if k not in entry]
        if missing:
            raise ValueError(
                f"speedups[{i}] lacks {', '.join(missing)}: each speed-up needs 'value' (dense "
                "time / factorized time), 'backend' (e.g. 'onnxruntime') and 'device' (where it "
                "ran)"
            )
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"speedups[{i}]['value'] must be a positive number, got {value!r}")
        _check_json(f"speedups[{i}]", dict(entry))
        out.append(dict(entry))
    return out


def merge_speedups(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``old`` plus ``new``; a new entry replaces an old one measured the same way."""

    def key(s: Mapping[str, Any]) -> tuple[Any, ...]:
        return (s["backend"], s["device"], s.get("batch_size"), s.get("precision"))

    replaced = {key(s) for s in new}
    return [dict(s) for s in old if key(s) not in replaced] + [dict(s) for s in new]


def speedup_label(entry: Mapping[str, Any]) -> str:
    """``onnxruntime, 2 CPU cores, batch 1, fp32``: where and how a speed-up was measured."""
    parts = [str(entry["backend"]), str(entry["device"])]
    if "batch_size" in entry:
        parts.append(f"batch {entry['batch_size']}")
    if "precision" in entry:
        parts.append(str(entry["precision"]))
    return ", ".join(parts)


def how_measured(
    metrics: Mapping[str, Any], provenance: Mapping[str, Any], input_size: Sequence[int]
) -> dict[str, str]:
    """One sentence per metric saying where the number comes from."""
    size = "x".join(str(v) for v in input_size)
    by = provenance.get("command") or provenance.get("recipe")
    reported = f"reported by `{by}`" if by else "reported by the caller of save_pretrained"
    split = metrics.get("split")
    data = metrics.get("dataset", "the data set")
    out: dict[str, str] = {}
    for key in metrics:
        spec = METRICS.get(key)
        if spec is None:
            continue
        if key == "macs":
            out[key] = f"counted by trp_zoo.count_flops (torch.utils.flop_counter) at input {size}"
        elif key == "params":
            out[key] = "counted by trp_zoo.count_params on the saved weights"
        elif key in ("macs_reduction", "params_reduction"):
            out[key] = f"{'dense_' + key.split('_')[0]} / {key.split('_')[0]}"
        elif spec.kind == "percent":
            where = f"{split} split of {data}" if split else str(data)
            out[key] = f"{where}, {reported}"
        else:
            out[key] = reported
    return out


def build_results(
    *,
    name: str,
    repo_id: str | None,
    architecture: Mapping[str, Any],
    metrics: Mapping[str, Any],
    speedups: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any],
    input_size: Sequence[int],
) -> dict[str, Any]:
    """The ``results.json`` document."""
    _check_json("provenance", dict(provenance))
    return {
        "format": RESULTS_FORMAT,
        "name": name,
        "repo_id": repo_id,
        "architecture": dict(architecture),
        "metrics": dict(metrics),
        "how_measured": how_measured(metrics, provenance, input_size),
        "speedups": [dict(s) for s in speedups],
        "provenance": dict(provenance),
        "software": software_versions(),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
