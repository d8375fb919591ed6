"""Accuracy checks (engine vs PyTorch, engine vs labels) and the user's pass/fail gates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import EvalData
from .engine import Engine


@dataclass(frozen=True)
class Agreement:
    """How closely an engine reproduces its PyTorch model on an evaluation set."""

    images: int
    max_abs_diff: float
    max_rel_diff: float  # max |engine - torch| / max |torch| over the whole set
    top1_agreement: float  # fraction of images whose arg-max class matches PyTorch's
    engine_top1: float | None  # percent correct against labels (None without labels)
    torch_top1: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_engine(engine: Engine, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``x`` in chunks of ``batch_size``, padding a chunk shorter than the smallest batch."""
    lo = engine.batch_range[0]
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        if n < lo:
            chunk = np.concatenate([chunk, np.zeros((lo - n, *x.shape[1:]), dtype=x.dtype)])
        outs.append(engine(chunk)[:n])
    return np.concatenate(outs)


@torch.inference_mode()
def check_agreement(
    engine: Engine, model: nn.Module, data: EvalData, *, batch_size: int, torch_batch: int = 256
) -> Agreement:
    """Run ``engine`` (batches of ``batch_size``) and ``model`` (eval mode, fp32, CPU) on every
    image of ``data``."""
    model.eval()
    max_abs, max_ref, agree, correct_engine, correct_torch, seen = 0.0, 0.0, 0, 0, 0, 0
    for images, labels in data.batches(max(torch_batch, batch_size)):
        ref = model(images).float().numpy()
        got = _run_engine(engine, images.numpy(), batch_size).astype(np.float32)
        if got.shape != ref.shape:
            raise ValueError(f"engine output shape {got.shape} != PyTorch {ref.shape}")
        max_abs = max(max_abs, float(np.max(np.abs(got - ref))))
        max_ref = max(max_ref, float(np.max(np.abs(ref))))
        pred_engine, pred_torch = got.argmax(1), ref.argmax(1)
        agree += int((pred_engine == pred_torch).sum())
        if labels is not None:
            y = labels.numpy()
            correct_engine += int((pred_engine == y).sum())
            correct_torch += int((pred_torch == y).sum())
        seen += len(images)
    if seen == 0:
        raise ValueError(f"the evaluation set {data.description} is empty")
    return Agreement(
        images=seen,
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / max(max_ref, 1e-12),
        top1_agreement=agree / seen,
        engine_top1=100.0 * correct_engine / seen if data.labelled else None,
        torch_top1=100.0 * correct_torch / seen if data.labelled else None,
    )


@dataclass(frozen=True)
class Gates:
    """Thresholds that make the build fail (None: not checked)."""

    max_abs_diff: float | None = None
    min_top1_agreement: float | None = None  # fraction in [0, 1]
    max_top1_drop: float | None = None  # percentage points below the model card's top-1
    min_speedup: float | None = None  # factorized vs dense p50 latency, every batch size

    def __post_init__(self) -> None:
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise ValueError(
                f"--min-top1-agreement is a fraction in [0, 1] (e.g. 0.99), got "
                f"{self.min_top1_agreement}"
            )
        for name in ("max_abs_diff", "max_top1_drop", "min_speedup"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 0 (a finite number), got {value}"
                )


@dataclass(frozen=True)
class GateResult:
    gate: str
    threshold: float
    passed: bool
    message: str


def evaluate_gates(report: Mapping[str, Any], gates: Gates) -> list[GateResult]:
    """Check each requested gate against a report (see ``runtime.report``)."""
    results: list[GateResult] = []
    acc = report["accuracy"]
    if gates.max_abs_diff is not None:
        limit = gates.max_abs_diff
        worst = max(acc["engines"].items(), key=lambda kv: kv[1]["max_abs_diff"])
        ok = worst[1]["max_abs_diff"] <= limit
        results.append(
            GateResult(
                "max-abs-diff",
                limit,
                ok,
                f"max abs difference vs PyTorch is {worst[1]['max_abs_diff']:.3g} on the "
                f"{worst[0]} engine (limit {limit:g})",
            )
        )
    if gates.min_top1_agreement is not None:
        limit = gates.min_top1_agreement
        worst = min(acc["engines"].items(), key=lambda kv: kv[1]["top1_agreement"])
        ok = worst[1]["top1_agreement"] >= limit
        results.append(
            GateResult(
                "min-top1-agreement",
                limit,
                ok,
                f"top-1 agreement with PyTorch is {worst[1]['top1_agreement']:.4f} on the "
                f"{worst[0]} engine (minimum {limit:g})",
            )
        )
    if gates.max_top1_drop is not None:
        results.append(_top1_drop_gate(acc, gates.max_top1_drop))
    if gates.min_speedup is not None:
        limit = gates.min_speedup
        rows = report["latency"]["batches"]
        worst_row = min(rows, key=lambda r: r["speedup"])
        ok = worst_row["speedup"] >= limit
        results.append(
            GateResult(
                "min-speedup",
                limit,
                ok,
                f"factorized vs dense speed-up is {worst_row['speedup']:.2f}x at batch "
                f"{worst_row['batch']} (minimum {limit:g}x)",
            )
        )
    return results


def _top1_drop_gate(acc: Mapping[str, Any], limit: float) -> GateResult:
    card = acc.get("card_top1")
    engine_top1 = acc["engines"]["factorized"].get("engine_top1")
    if engine_top1 is None:
        return GateResult(
            "max-top1-drop",
            limit,
            False,
            "cannot check --max-top1-drop: no labelled evaluation data (pass --data)",
        )
    if card is None:
        return GateResult(
            "max-top1-drop",
            limit,
            False,
            "cannot check --max-top1-drop: the model card records no top-1",
        )
    drop = card - engine_top1
    return GateResult(
        "max-top1-drop",
        limit,
        drop <= limit,
        f"engine top-1 {engine_top1:.2f}% is {drop:.2f} points below the model card's "
        f"{card:.2f}% (limit {limit:g})",
    )
