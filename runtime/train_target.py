"""``--target-latency``: a rank plan chosen for a deployment target at the start of training.

The training engine (``trp_zoo.train``) knows nothing of engines or timing: a recipe hands
``plan_for_target`` to it (``run_recipe(..., target_planner=plan_for_target)``), and the
trainer calls it once, on the starting weights, when ``--target-latency`` is set. The plan
covers the run's ``--layers`` kind only: the layers TRP trains low-rank.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from trp_zoo.algorithms.layers import select_targets
from trp_zoo.lowrank.linears import LAYER_KINDS, LayerKind, looked_for
from trp_zoo.train.config import TrainConfig

from .errors import RuntimeToolError
from .planner import plan_ranks
from .target import Target


def plan_for_target(
    model: nn.Module,
    cfg: TrainConfig,
    input_size: tuple[int, int, int],
    images: Tensor | None = None,
) -> dict[str, Any]:
    """Measure the model's ``--layers`` candidates on ``--target-backend`` (cached), select
    ranks for ``--target-latency`` from the model's current weights and return the plan as JSON
    (``{"plan": {name: rank}, ...}``, with its predicted latency and MACs). With
    ``images``, ranks are priced by the output divergence they cause on them
    (``trp_zoo.algorithms.sensitivity``) instead of by spectral energy. One intra-op thread.
    """
    try:
        _check_candidates(model, cfg.layers)
        target = Target(
            backend=cfg.target_backend,
            batch_size=cfg.target_batch_size,
            input_size=input_size,
            threads=1,
        )
        result = plan_ranks(
            copy.deepcopy(model).cpu().float(),
            target,
            latency=cfg.target_latency,
            scheme=cfg.scheme,
            layers=cfg.layers,
            rank_step=cfg.target_rank_step,
            sensitivity_images=images,
        )
    except (ValueError, RuntimeToolError) as err:
        raise ValueError(f"--target-latency {cfg.target_latency}: {err}") from None
    return result.to_dict()


def _check_candidates(model: nn.Module, layers: LayerKind) -> None:
    """Refuse, before anything is timed, a model with no candidate of the ``--layers`` kind."""
    if not select_targets(model, layers=layers):
        others = " or ".join(k for k in LAYER_KINDS if k != layers)
        raise ValueError(
            f"the model has no {looked_for(layers)} other than the stem and classifier for "
            f"--layers {layers} to plan over: use --layers {others}"
        )
