"""``decompose``: turn selected convs and Linears of a model into factorized layers.

Convs become ``FactorizedConv2d`` (by the chosen scheme), Linears ``FactorizedLinear``
(always the channel scheme: a Linear is a ``1 x 1`` conv per token).
"""

from __future__ import annotations

import copy
import logging
import numbers
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..lowrank.convs import ConvGeometry, is_plain
from ..lowrank.criteria import RankCriterion, RankLike, as_criterion
from ..lowrank.factorized import FACTORIZED_TYPES, FactorizedConv2d, FactorizedLinear
from ..lowrank.linears import (
    Layer,
    LayerKind,
    effective_weight,
    layer_scheme,
    looked_for,
    route_through_layer,
)
from ..lowrank.schemes import Scheme, get_scheme
from ..lowrank.svd import Method, svd
from ..modules import canonical_name, set_submodule, unwrap_model
from .layers import Patterns, select_targets

logger = logging.getLogger(__name__)

RankSpec = RankLike | Mapping[str, int]


def validated_plan(plan: Mapping[str, int]) -> dict[str, int]:
    """A rank plan with canonical layer names; every rank a positive int (ValueError)."""
    out: dict[str, int] = {}
    for name, rank in plan.items():
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rank plan entry {name!r}: rank must be a positive int, got {rank!r}")
        out[canonical_name(name)] = int(rank)
    return out


def check_plan_ranks(plan: Mapping[str, int], targets: Mapping[str, Layer], scheme: Scheme) -> None:
    """Refuse a plan rank above its layer's full rank under ``scheme`` (ValueError)."""
    for name, layer in targets.items():
        sch = layer_scheme(layer, scheme)
        full = sch.full_rank(ConvGeometry.of(layer))
        if plan[name] > full:
            raise ValueError(
                f"rank plan asks rank {plan[name]} for {name!r}, but its full rank under the "
                f"{sch.name} scheme is {full}; use a rank between 1 and {full}"
            )


def decompose(
    model: nn.Module,
    scheme: str | Scheme = "channel",
    rank: RankSpec | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    *,
    method: Method = "exact",
    layers: LayerKind = "all",
) -> nn.Module:
    """Return a copy of ``model`` whose selected layers are factorized (``model`` is untouched).

    ``rank`` is an int (rank cap for every layer), a float in (0, 1) (energy threshold), a
    ``RankCriterion``, a callable ``f(singular_values) -> rank``, or a ``{name: rank}`` plan
    (then exactly those layers are targets, convs or Linears). ``layers`` picks the
    candidates otherwise: ``conv``, ``linear`` or ``all``. A layer stays dense when its
    rank would not lower its multiply-adds (``r < N*C/(N+C)`` for a Linear); a model in
    which nothing is factorized is returned with a warning. ``method`` picks the SVD:
    ``exact`` or ``gram`` (faster).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"decompose takes a torch nn.Module, got {type(model).__name__}: build the model "
            "first, e.g. timm.create_model('resnet18')"
        )
    if not isinstance(scheme, str | Scheme):
        raise TypeError(
            f"decompose's second argument is the scheme ('channel' or 'spatial'), got "
            f"{scheme!r}: pass the rank by keyword, decompose(model, rank={scheme!r})"
        )
    if rank is None:
        raise ValueError(
            "decompose needs rank=: an int, an energy threshold in (0, 1), a {name: rank} plan "
            "or a callable on singular values"
        )
    sch = get_scheme(scheme)
    plan = validated_plan(rank) if isinstance(rank, Mapping) else None
    criterion: RankCriterion | None = None if plan is not None else as_criterion(rank)  # type: ignore[arg-type]
    new = copy.deepcopy(unwrap_model(model))
    names = plan.keys() if plan is not None else None
    targets = select_targets(new, include, exclude, names=names, layers=layers)
    if plan is not None:
        check_plan_ranks(plan, targets, sch)
    factorized = 0
    kept: list[str] = []  # planned layers whose rank does not lower their cost
    for name, layer in targets.items():
        lsch = layer_scheme(layer, sch)
        geom = ConvGeometry.of(layer)
        u, s, vh = svd(lsch.to_matrix(effective_weight(layer)), method)
        r = plan[name] if plan is not None else criterion(s.float())  # type: ignore[misc]
        if not lsch.lowers_cost(geom, r):
            msg = (
                f"{name}: rank {r} does not lower its cost under the {lsch.name} scheme "
                f"(at most {lsch.max_useful_rank(geom)} does)"
            )
            kept.append(msg)
            logger.info("%s; kept dense", msg)
            continue
        set_submodule(new, name, factorize_layer(layer, lsch, (u, s, vh), r))
        route_through_layer(new, name)
        factorized += 1
    if plan is not None and kept:  # one warning for the plan, not one per layer
        shown = "; ".join(kept[:3]) + (f"; ... ({len(kept)} in all)" if len(kept) > 3 else "")
        warnings.warn(
            f"decompose kept {len(kept)} planned layer(s) dense: {shown}; lower their ranks or "
            "leave them out of the plan",
            stacklevel=2,
        )
    if not factorized:
        why = (
            f"every one of its {len(targets)} candidate layers would need a rank that does not "
            "lower its cost; lower the rank or energy"
            if targets
            else f"it has no candidate layer ({looked_for(layers)}; the stem and classifier "
            "stay dense unless include= names them)"
        )
        warnings.warn(f"decompose factorized no layer of the model: {why}", stacklevel=2)
    return new


def factorize_layer(
    layer: Layer, scheme: Scheme, factors: tuple[Tensor, Tensor, Tensor], rank: int
) -> FactorizedConv2d | FactorizedLinear:
    """``factorize_conv`` or ``factorize_linear``, whichever fits ``layer``."""
    if isinstance(layer, nn.Linear):
        return factorize_linear(layer, factors, rank)
    return factorize_conv(layer, scheme, factors, rank)


def factorize_linear(
    linear: nn.Linear, factors: tuple[Tensor, Tensor, Tensor], rank: int
) -> FactorizedLinear:
    """``linear`` factorized at ``rank`` from the thin SVD ``(u, s, vh)`` of its weight:
    ``A = sqrt(S_r) V_r^T``, ``B = U_r sqrt(S_r)``, in the weight's dtype; bias and training
    mode kept."""
    u, s, vh = factors
    geom = ConvGeometry.of(linear)
    first, second = layer_scheme(linear, "channel").factor_weights(
        u[:, :rank], s[:rank], vh[:rank], geom
    )
    dtype = linear.weight.dtype
    bias = linear.bias.detach() if linear.bias is not None else None
    layer = FactorizedLinear.from_factors(
        first.reshape(rank, -1).to(dtype), second.reshape(-1, rank).to(dtype), bias
    )
    layer.train(linear.training)
    return layer


def factorize_conv(
    conv: nn.Conv2d, scheme: Scheme, factors: tuple[Tensor, Tensor, Tensor], rank: int
) -> FactorizedConv2d:
    """``conv`` factorized at ``rank`` from ``factors``, the thin SVD ``(u, s, vh)`` of its
    effective weight under ``scheme``: kernels in the weight's dtype, the conv's bias and
    training mode kept."""
    u, s, vh = factors
    geom = ConvGeometry.of(conv)
    first, second = scheme.factor_weights(u[:, :rank], s[:rank], vh[:rank], geom)
    dtype = conv.weight.dtype
    bias = conv.bias.detach() if conv.bias is not None else None
    layer = FactorizedConv2d.from_factors(geom, scheme, first.to(dtype), second.to(dtype), bias)
    layer.train(conv.training)
    return layer


def factorize_architecture(
    model: nn.Module, scheme: str | Scheme, plan: Mapping[str, int]
) -> nn.Module:
    """Replace the planned convs and Linears of ``model`` in place by freshly initialized
    factorized layers.

    Used to rebuild a published architecture from its rank plan before loading weights.
    """
    sch = get_scheme(scheme)
    plan = validated_plan(plan)
    model = unwrap_model(model)
    targets = select_targets(model, names=plan.keys())
    check_plan_ranks(plan, targets, sch)
    for name, old in targets.items():
        layer: nn.Module
        if isinstance(old, nn.Linear):
            layer = FactorizedLinear(
                old.in_features, old.out_features, plan[name], bias=old.bias is not None
            )
        else:
            layer = FactorizedConv2d(ConvGeometry.of(old), plan[name], sch)
        layer.to(device=old.weight.device, dtype=old.weight.dtype)
        set_submodule(model, name, layer)
        route_through_layer(model, name)
    return model


def rank_plan(model: nn.Module) -> dict[str, int]:
    """``{name: rank}`` of every factorized layer (empty for a dense model)."""
    return {
        canonical_name(n): m.rank
        for n, m in unwrap_model(model).named_modules()
        if isinstance(m, FACTORIZED_TYPES)
    }


def factorized_scheme(model: nn.Module) -> str | None:
    """The scheme of the model's factorized convs (None for a dense model).

    ``channel`` when only Linears are factorized (their scheme); the scheme of the
    convs otherwise, since Linears are factorized the same way under either scheme.
    """
    modules = list(unwrap_model(model).modules())
    schemes = {m.scheme for m in modules if isinstance(m, FactorizedConv2d)}
    if len(schemes) > 1:
        raise ValueError(f"model mixes factorization schemes {sorted(schemes)}")
    if not schemes and any(isinstance(m, FactorizedLinear) for m in modules):
        return "channel"
    return schemes.pop() if schemes else None


@torch.no_grad()
def project_weights(model: nn.Module, scheme: str | Scheme, plan: Mapping[str, int]) -> nn.Module:
    """Copy of a dense model whose planned layers hold their rank-r truncation (for checks)."""
    new = copy.deepcopy(unwrap_model(model))
    vplan = validated_plan(plan)
    for name, layer in select_targets(new, names=vplan.keys()).items():
        sch = layer_scheme(layer, scheme)
        u, s, vh = svd(sch.to_matrix(effective_weight(layer)), "exact")
        r = vplan[name]
        low = (u[:, :r] * s[:r]) @ vh[:r]
        weight = sch.from_matrix(low, tuple(layer.weight.shape)).to(layer.weight.dtype)
        if isinstance(layer, nn.Conv2d) and not is_plain(layer):
            # a weight-standardized conv would standardize the truncated kernel again
            geom = ConvGeometry.of(layer)
            set_submodule(new, name, _dense_conv(geom, weight, layer.bias, layer.training))
        else:
            layer.weight.copy_(weight)
    return new


def _dense_conv(
    geom: ConvGeometry, weight: Tensor, bias: Tensor | None, training: bool
) -> nn.Conv2d:
    """A plain conv of ``geom`` applying ``weight`` (and ``bias``), in ``weight``'s dtype."""
    conv = geom.build_conv().to(device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    if bias is not None and conv.bias is not None:
        conv.bias.copy_(bias)
    conv.train(training)
    return conv


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """Copy of a factorized model with every factorized layer merged back into one dense layer.

    The dense model computes the same function (up to float rounding): the dense
    counterpart against which speed-ups are measured.
    """
    new = copy.deepcopy(unwrap_model(model))
    for name, layer in list(new.named_modules()):
        if isinstance(layer, FactorizedLinear):
            set_submodule(new, name, _dense_linear(layer))
            continue
        if not isinstance(layer, FactorizedConv2d):
            continue
        conv = _dense_conv(layer.geom, layer.dense_weight(), layer.second.bias, layer.training)
        set_submodule(new, name, conv)
    return new


def _dense_linear(layer: FactorizedLinear) -> nn.Linear:
    weight = layer.dense_weight()
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    linear.to(device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if layer.bias is not None and linear.bias is not None:
        linear.bias.copy_(layer.bias)
    linear.train(layer.training)
    return linear
