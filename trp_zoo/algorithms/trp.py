"""The TRP training hook: periodic low-rank projection plus a nuclear-norm sub-gradient.

Usage in any training loop::

    trp = TRP(model, scheme="channel", energy=0.9, period=20).attach(optimizer)
    ...  # train as usual; optimizer.step() (or GradScaler.step) drives the hook
    plan = trp.project()  # final projection, {layer name: rank}

Optimizer steps are counted from 0. Step ``s`` is a *period step* when
``(s + 1) % period == 0``. Right before a period step's forward pass (i.e. after the
previous step, or at ``attach`` for step 0) every target weight is replaced by its
rank-``r`` truncation, ``r`` chosen by the energy criterion; the period step's
``optimizer.step()`` then adds ``nuclear_weight * U_r V_r^T`` from that same SVD to the
weight's gradient. Optimizer state (momentum, Adam moments) is left untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from ..lowrank.convs import ConvGeometry, is_plain
from ..lowrank.criteria import EnergyThreshold, FixedRank, RankCriterion
from ..lowrank.linears import LayerKind, check_kind, layer_scheme, looked_for
from ..lowrank.schemes import Scheme, get_scheme
from ..lowrank.svd import Method, Projection, SubspaceProjector, nuclear_subgradient, one_thread
from ..modules import unwrap_model
from .decompose import check_plan_ranks, validated_plan
from .layers import Patterns, select_targets


class TRP:
    """Trained Rank Pruning for the convs and Linears of ``model`` (DDP-wrapped models welcome).

    ``layers`` picks the candidates: ``conv``, ``linear`` or ``all`` (the default); Linears
    are projected as matrices (the channel scheme) whatever ``scheme`` the convs use.
    """

    def __init__(
        self,
        model: nn.Module,
        scheme: str | Scheme = "channel",
        energy: float | RankCriterion = 0.9,
        period: int = 20,
        nuclear_weight: float = 3e-4,
        include: Patterns = None,
        exclude: Patterns = None,
        *,
        plan: Mapping[str, int] | None = None,
        method: Method = "subspace",
        project: bool = True,
        layers: LayerKind = "all",
    ) -> None:
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be a positive int (optimizer steps), got {period!r}")
        if not math.isfinite(nuclear_weight) or nuclear_weight < 0:
            raise ValueError(f"nuclear_weight must be a finite number >= 0, got {nuclear_weight!r}")
        self.model = unwrap_model(model)
        self.scheme = get_scheme(scheme)
        self.criterion = energy if isinstance(energy, RankCriterion) else EnergyThreshold(energy)
        self.period = period
        self.nuclear_weight = float(nuclear_weight)
        self.projecting = project
        self.plan = validated_plan(plan) if plan is not None else None
        layers = check_kind(layers)
        targets = select_targets(self.model, include, exclude, names=self.plan, layers=layers)
        standardized = [n for n, m in targets.items() if not is_plain(m)]
        if standardized and self.plan is not None:
            raise ValueError(
                "weight-standardized convs cannot be trained low-rank by projection: "
                f"{standardized}"
            )
        self.targets = {n: m for n, m in targets.items() if is_plain(m)}
        if not self.targets:
            raise ValueError(
                f"TRP found no layer to train low-rank: it looked for {looked_for(layers)}, "
                "other than the stem and classifier; check layers=/include/exclude/plan"
            )
        if self.plan is not None:  # a cap above the full rank would silently cap nothing
            check_plan_ranks(self.plan, self.targets, self.scheme)
        self.schemes = {n: layer_scheme(m, self.scheme) for n, m in self.targets.items()}
        self.projectors = {n: SubspaceProjector(method) for n in self.targets}
        self.step = 0
        self.ranks: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self.projection_seconds = 0.0
        self.full_decompositions = 0
        self.tracked_decompositions = 0
        # per layer: the projection whose direction the next step adds (or the direction)
        self._pending: dict[str, Tensor | Projection] = {}
        self._projected_step: int | None = None  # the period step the last projection prepared
        self._handles: list[Any] = []

    # -- schedule ---------------------------------------------------------------------
    def is_period_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) projects and gets the sub-gradient."""
        return (step + 1) % self.period == 0

    def criterion_for(self, name: str) -> RankCriterion:
        """The rank criterion of one layer (the energy criterion, capped by the plan)."""
        if self.plan is not None:
            return self.criterion & FixedRank(self.plan[name])
        return self.criterion

    # -- hooks ------------------------------------------------------------------------
    def attach(self, optimizer: Optimizer) -> TRP:
        """Hook into ``optimizer.step()``; returns ``self``."""
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, m in self.targets.items() if id(m.weight) not in optimized]
        if missing:
            raise ValueError(
                f"the optimizer does not update the weights of {missing[:5]}; build the optimizer "
                "from this model's parameters (after any DDP wrapping) before attaching TRP"
            )
        self.detach()
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        if self.is_period_step(self.step) and self._projected_step != self.step:
            self._project(queue_direction=True)
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if not self._pending:
            return
        for name, pending in self._pending.items():
            grad = self.targets[name].weight.grad
            if grad is None:
                continue
            if isinstance(pending, Projection):
                matrix = self.schemes[name].to_matrix(grad)
                if _is_view_of(matrix, grad):
                    pending.add_direction(matrix, self.nuclear_weight)
                    continue
            grad.add_(self._direction(name), alpha=self.nuclear_weight)
        self._pending = {}

    def _direction(self, name: str) -> Tensor:
        """The pending nuclear-norm direction of one layer, formed, in the weight's shape."""
        pending = self._pending[name]
        if isinstance(pending, Tensor):
            return pending
        shape = tuple(self.targets[name].weight.shape)
        return self.schemes[name].from_matrix(pending.nuclear_direction, shape)

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        if self.is_period_step(self.step):
            self._project(queue_direction=True)

    # -- projection -------------------------------------------------------------------
    def project(self, ranks: Mapping[str, int] | None = None) -> dict[str, int]:
        """Project every target weight to its low rank now; returns ``{name: rank}``.

        ``ranks`` fixes each layer's rank, e.g. ``trp.project(trp.ranks)``: the ranks the
        last periodic projection chose, so that a final projection only removes what the
        steps since then added (applying the energy criterion again would cut a further
        ``1 - energy`` of every layer's energy, with no training left to recover from it).
        Default: the hook's criterion. Projects also when the hook was built with
        ``project=False`` (nuclear norm only).
        """
        if ranks is not None:
            ranks = validated_plan(ranks)
            unknown = set(ranks) - set(self.targets)
            if unknown:
                raise ValueError(
                    f"ranks name layers this hook does not target: {sorted(unknown)[:5]}"
                )
        self._project(queue_direction=False, projecting=True, fixed=ranks)
        return dict(self.ranks)

    @torch.no_grad()
    def _project(
        self,
        queue_direction: bool,
        projecting: bool | None = None,
        fixed: Mapping[str, int] | None = None,
    ) -> None:
        start = time.perf_counter()
        if projecting is None:
            projecting = self.projecting
        if not projecting:
            self._nuclear_only(queue_direction)
        results = self._projections(fixed) if projecting else {}
        for name, (matrix, result) in results.items():
            weight = self.targets[name].weight
            if result.projected is not matrix:  # not projected in place
                weight.copy_(self.schemes[name].from_matrix(result.projected, tuple(weight.shape)))
            self.ranks[name] = result.rank
            if result.full:
                self.full_decompositions += 1
            else:
                self.tracked_decompositions += 1
            if queue_direction and self.nuclear_weight > 0:
                self._pending[name] = result  # its direction is added by the next step
        self._sync_ranks()
        if queue_direction:
            self._projected_step = self.step
        self.projection_seconds += time.perf_counter() - start
        self.history.append({"step": self.step, "ranks": dict(self.ranks)})

    def _projections(self, fixed: Mapping[str, int] | None) -> dict[str, tuple[Tensor, Projection]]:
        """Every target's matrix and projection, in target order. A matrix that is a view of
        its weight is projected in place.

        On CPU the layers are projected in parallel, largest first, each on one intra-op
        thread: LAPACK calls run on one thread anyway (``lowrank.svd.one_thread``), and two
        of them side by side on two cores take half the time. Each layer's result does not
        depend on the schedule.
        """

        def project(name: str) -> tuple[Tensor, Projection]:
            criterion = (
                FixedRank(fixed[name]) if fixed and name in fixed else self.criterion_for(name)
            )
            weight = self.targets[name].weight.detach()  # grad mode is per thread
            matrix = self.schemes[name].to_matrix(weight)
            in_place = _is_view_of(matrix, weight)
            return matrix, self.projectors[name](matrix, criterion, in_place=in_place)

        workers = torch.get_num_threads()
        on_cpu = all(m.weight.device.type == "cpu" for m in self.targets.values())
        if workers == 1 or not on_cpu:
            return {name: project(name) for name in self.targets}
        largest_first = sorted(self.targets, key=lambda n: -self.targets[n].weight.numel())
        # threads started inside one_thread() run their torch kernels on one thread
        with one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="trp") as pool:
            done = dict(zip(largest_first, pool.map(project, largest_first), strict=True))
        return {name: done[name] for name in self.targets}

    def _nuclear_only(self, queue_direction: bool) -> None:
        """Nuclear-norm regularization alone: full-rank ``U V^T`` sub-gradient, no projection."""
        for name, conv in self.targets.items():
            weight = conv.weight
            sch = self.schemes[name]
            direction, s = nuclear_subgradient(sch.to_matrix(weight))
            self.ranks[name] = self.criterion_for(name)(s.float())
            self.full_decompositions += 1
            if queue_direction and self.nuclear_weight > 0:
                self._pending[name] = sch.from_matrix(direction, tuple(weight.shape))

    def _sync_ranks(self) -> None:
        """Make every DDP process hold rank 0's projected weights and pending gradients."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for name, conv in self.targets.items():
            dist.broadcast(conv.weight.data, src=0)
            if name in self._pending:
                direction = self._direction(name).contiguous()
                self._pending[name] = direction
                dist.broadcast(direction, src=0)

    # -- reporting and checkpoints ----------------------------------------------------
    def macs_per_pixel(self) -> dict[str, tuple[int, int]]:
        """``{name: (dense, factorized)}`` multiply-adds per output pixel (per token for a
        Linear) at the current ranks."""
        out = {}
        for name, rank in self.ranks.items():
            geom, sch = ConvGeometry.of(self.targets[name]), self.schemes[name]
            out[name] = (sch.dense_macs_per_pixel(geom), sch.factorized_macs_per_pixel(geom, rank))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (step, ranks, pending gradients, subspaces)."""
        return {
            "step": self.step,
            "ranks": dict(self.ranks),
            "history": list(self.history),
            "pending": {n: self._direction(n).clone() for n in self._pending},
            "projected_step": self._projected_step,
            "projectors": {n: p.state_dict() for n, p in self.projectors.items()},
            "projection_seconds": self.projection_seconds,
            "full_decompositions": self.full_decompositions,
            "tracked_decompositions": self.tracked_decompositions,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state.get("ranks", {})) - set(self.targets)
        if unknown:
            raise ValueError(
                f"TRP state names layers this hook does not target: {sorted(unknown)[:5]}"
            )
        self.step = int(state["step"])
        self.ranks = dict(state.get("ranks", {}))
        self.history = list(state.get("history", []))
        self._pending = {
            n: t.to(self.targets[n].weight.device) for n, t in state.get("pending", {}).items()
        }
        self._projected_step = state.get("projected_step")
        for name, proj_state in state.get("projectors", {}).items():
            self.projectors[name].load_state_dict(proj_state)
        self.projection_seconds = float(state.get("projection_seconds", 0.0))
        self.full_decompositions = int(state.get("full_decompositions", 0))
        self.tracked_decompositions = int(state.get("tracked_decompositions", 0))

    def __repr__(self) -> str:
        return (
            f"TRP(scheme={self.scheme.name}, criterion={self.criterion!r}, period={self.period}, "
            f"nuclear_weight={self.nuclear_weight}, layers={len(self.targets)}, step={self.step})"
        )


def _is_view_of(matrix: Tensor, tensor: Tensor) -> bool:
    """Whether ``matrix`` (``to_matrix`` of ``tensor``) lays out ``tensor``'s own memory, so
    that writing into it writes ``tensor`` (the channel scheme of a contiguous weight)."""
    same = matrix.data_ptr() == tensor.data_ptr() and matrix.numel() == tensor.numel()
    return same and matrix.is_contiguous() and tensor.is_contiguous()
