"""A rank plan selected for a deployment target, with what it is predicted to save."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .target import Target


def check_fraction(value: object, what: str) -> float:
    """A budget fraction must lie in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{what} budget must be a fraction of the dense model in (0, 1], got {value!r} "
            "(e.g. 0.5 for half the dense latency)"
        )
    return float(value)


@dataclass
class TargetPlan:
    """A selected plan with its budget, predicted latency, MACs and kept energy."""

    plan: dict[str, int]
    scheme: str
    budget: str  # "latency" or "macs"
    fraction: float
    target: Target
    target_key: dict[str, Any]
    dense_ms: float
    predicted_ms: float
    dense_macs: int
    planned_macs: int
    mean_energy: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    min_quotient: float | None = None  # asked-for speed-up / MACs reduction, if any
    proportional: bool = True  # min_quotient met (as predicted)
    objective: str = "energy"  # what the selection minimized (see Planner.use_sensitivity)
    output_kl: float | None = None  # summed measured divergence, with sensitivity
    layer_cost_scale: float = 1.0  # < 1: layers timed alone summed past the whole model

    @property
    def predicted_quotient(self) -> float:
        """Predicted speed-up over the MACs reduction."""
        return (self.dense_ms / self.predicted_ms) / (self.dense_macs / self.planned_macs)

    @property
    def predicted_fraction(self) -> float:
        return self.predicted_ms / self.dense_ms

    @property
    def macs_fraction(self) -> float:
        return self.planned_macs / self.dense_macs

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``plan`` is what ``--rank-plan`` and ``trp_zoo.decompose`` read."""
        return {
            "plan": dict(self.plan),
            "scheme": self.scheme,
            "budget": {"kind": self.budget, "fraction": self.fraction},
            "target": {**self.target_key, "input_size": list(self.target.input_size)},
            "predicted": {
                "dense_ms": self.dense_ms,
                "planned_ms": self.predicted_ms,
                "latency_fraction": self.predicted_fraction,
                "speedup_over_macs_reduction": self.predicted_quotient,
                "min_quotient": self.min_quotient,
                "min_quotient_met": self.proportional,
                "layer_cost_scale": self.layer_cost_scale,
            },
            "macs": {
                "dense": self.dense_macs,
                "planned": self.planned_macs,
                "fraction": self.macs_fraction,
                "reduction": self.dense_macs / self.planned_macs,
            },
            "objective": self.objective,
            "predicted_output_kl": self.output_kl,
            "mean_kept_energy": self.mean_energy,
            "layers": self.layers,
        }
