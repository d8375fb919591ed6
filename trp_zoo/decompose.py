"""``decompose``: turn selected convs of a model into ``FactorizedConv2d`` layers."""

from __future__ import annotations

import copy
import logging
import numbers
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .convs import ConvGeometry, effective_weight
from .criteria import RankCriterion, RankLike, as_criterion
from .factorized import FactorizedConv2d
from .lowrank import Method, svd
from .modules import canonical_name, set_submodule, unwrap_model
from .schemes import Scheme, get_scheme
from .targets import Patterns, select_targets

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


def _check_plan_ranks(
    plan: Mapping[str, int], targets: Mapping[str, nn.Conv2d], scheme: Scheme
) -> None:
    for name, conv in targets.items():
        full = scheme.full_rank(ConvGeometry.of(conv))
        if plan[name] > full:
            raise ValueError(
                f"rank plan asks rank {plan[name]} for {name!r}, but its full rank under the "
                f"{scheme.name} scheme is {full}; use a rank between 1 and {full}"
            )


def decompose(
    model: nn.Module,
    scheme: str | Scheme = "channel",
    rank: RankSpec | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    *,
    method: Method = "exact",
) -> nn.Module:
    """Return a copy of ``model`` whose selected convs are factorized (``model`` is untouched).

    ``rank`` is an int (rank cap for every layer), a float in (0, 1) (energy threshold), a
    ``RankCriterion``, a callable ``f(singular_values) -> rank``, or a ``{name: rank}`` plan
    (then exactly those layers are targets). A layer stays dense when its rank would not
    lower its multiply-adds. ``method`` picks the SVD: ``exact`` or ``gram`` (faster).
    """
    if rank is None:
        raise ValueError(
            "decompose needs rank=: an int, an energy threshold in (0, 1), a {name: rank} plan "
            "or a callable on singular values"
        )
    sch = get_scheme(scheme)
    plan = validated_plan(rank) if isinstance(rank, Mapping) else None
    criterion: RankCriterion | None = None if plan is not None else as_criterion(rank)  # type: ignore[arg-type]
    new = copy.deepcopy(unwrap_model(model))
    targets = select_targets(new, include, exclude, names=plan.keys() if plan is not None else None)
    if plan is not None:
        _check_plan_ranks(plan, targets, sch)
    factorized = 0
    for name, conv in targets.items():
        geom = ConvGeometry.of(conv)
        u, s, vh = svd(sch.to_matrix(effective_weight(conv)), method)
        r = plan[name] if plan is not None else criterion(s.float())  # type: ignore[misc]
        if not sch.lowers_cost(geom, r):
            msg = (
                f"{name}: rank {r} does not lower its cost under the {sch.name} scheme "
                f"(at most {sch.max_useful_rank(geom)} does); kept dense"
            )
            if plan is not None:
                warnings.warn(msg, stacklevel=2)
            logger.info(msg)
            continue
        set_submodule(new, name, factorize_conv(conv, sch, (u, s, vh), r))
        factorized += 1
    if not factorized:
        why = (
            "no conv matched include/exclude/plan"
            if not targets
            else f"no rank lowered the cost of any of the {len(targets)} selected convs"
        )
        warnings.warn(
            f"decompose factorized nothing ({why}); the model is returned dense", stacklevel=2
        )
    return new


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
    """Replace the planned convs of ``model`` in place by freshly initialized factorized layers.

    Used to rebuild a published architecture from its rank plan before loading weights.
    """
    sch = get_scheme(scheme)
    plan = validated_plan(plan)
    model = unwrap_model(model)
    targets = select_targets(model, names=plan.keys())
    _check_plan_ranks(plan, targets, sch)
    for name, conv in targets.items():
        layer = FactorizedConv2d(ConvGeometry.of(conv), plan[name], sch)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        set_submodule(model, name, layer)
    return model


def rank_plan(model: nn.Module) -> dict[str, int]:
    """``{name: rank}`` of every factorized layer (empty for a dense model)."""
    return {
        canonical_name(n): m.rank
        for n, m in unwrap_model(model).named_modules()
        if isinstance(m, FactorizedConv2d)
    }


def factorized_scheme(model: nn.Module) -> str | None:
    """The scheme of the model's factorized layers (None for a dense model)."""
    schemes = {m.scheme for m in unwrap_model(model).modules() if isinstance(m, FactorizedConv2d)}
    if len(schemes) > 1:
        raise ValueError(f"model mixes factorization schemes {sorted(schemes)}")
    return schemes.pop() if schemes else None


@torch.no_grad()
def project_weights(model: nn.Module, scheme: str | Scheme, plan: Mapping[str, int]) -> nn.Module:
    """Copy of a dense model whose planned convs hold their rank-r truncation (for checks)."""
    sch = get_scheme(scheme)
    new = copy.deepcopy(unwrap_model(model))
    vplan = validated_plan(plan)
    for name, conv in select_targets(new, names=vplan.keys()).items():
        u, s, vh = svd(sch.to_matrix(conv.weight), "exact")
        r = vplan[name]
        low = (u[:, :r] * s[:r]) @ vh[:r]
        conv.weight.copy_(sch.from_matrix(low, tuple(conv.weight.shape)).to(conv.weight.dtype))
    return new


@torch.no_grad()
def densify(model: nn.Module) -> nn.Module:
    """Copy of a factorized model with every ``FactorizedConv2d`` merged back into one dense conv.

    The dense model computes the same function (up to float rounding): the dense
    counterpart against which speed-ups are measured.
    """
    from timm.layers import Conv2dSame

    new = copy.deepcopy(unwrap_model(model))
    for name, layer in list(new.named_modules()):
        if not isinstance(layer, FactorizedConv2d):
            continue
        g = layer.geom
        conv: nn.Conv2d
        if g.dynamic_same:
            conv = Conv2dSame(
                g.in_channels, g.out_channels, g.kernel_size, g.stride, 0, g.dilation, bias=g.bias
            )
        else:
            conv = nn.Conv2d(
                g.in_channels,
                g.out_channels,
                g.kernel_size,
                stride=g.stride,
                padding=g.padding,
                dilation=g.dilation,
                bias=g.bias,
                padding_mode=g.padding_mode,
            )
        weight = layer.dense_weight()
        conv.to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        if layer.second.bias is not None and conv.bias is not None:
            conv.bias.copy_(layer.second.bias)
        conv.train(layer.training)
        set_submodule(new, name, conv)
    return new
