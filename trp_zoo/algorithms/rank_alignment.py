"""Rank plans that turn saved MACs into real speed: ranks on hardware-friendly multiples.

Low-rank layers lose their MACs savings in practice when ranks are odd sizes (vector
units and blocked memory layouts such as ONNX Runtime's NCHWc or TensorRT's tensor-core
tiles work in channel groups of 8 or 16) or when a layer barely gets cheaper but pays for
an extra kernel launch and an extra activation round trip. ``aligned_rank_plan`` picks,
for a target MACs reduction, ranks that are multiples of ``multiple`` and keeps layers
dense whose own reduction would be small; ``pad_ranks`` rounds the ranks of an already
factorized model (e.g. TRP-trained) up to such multiples without changing its function.
Convs and Linears alike: a Linear is ranked as the channel scheme of the ``1 x 1`` conv it
is per token, its MACs counted over its tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..lowrank.convs import ConvGeometry
from ..lowrank.factorized import FactorizedConv2d, FactorizedLinear
from ..lowrank.linears import LayerKind, layer_scheme
from ..lowrank.macs import count_flops
from ..lowrank.schemes import Scheme, get_scheme
from ..lowrank.shapes import output_positions
from ..modules import set_submodule
from .layers import Patterns, select_targets


def aligned_rank_plan(
    model: nn.Module,
    scheme: str,
    macs_reduction: float,
    input_size: Sequence[int],
    *,
    multiple: int = 16,
    min_layer_reduction: float = 1.25,
    include: Patterns = None,
    exclude: Patterns = None,
    layers: LayerKind = "all",
) -> dict[str, int]:
    """A ``{layer: rank}`` plan cutting the model's MACs by at least ``macs_reduction``.

    Candidates are the layers of kind ``layers`` (``conv``, ``linear`` or ``all``) that
    ``decompose`` would target. Every layer gets ``alpha * full_rank`` rounded to a
    multiple of ``multiple`` (at least ``multiple``), with the largest ``alpha`` that still
    reaches the target; layers whose own MACs would drop less than ``min_layer_reduction``
    times stay dense (as do 1-wide conv kernels under the spatial scheme). Then ranks are
    raised one step at a time, cheapest step first, while the target still holds, to land
    as close to it as the steps allow. The plan is structural (no singular values): for
    deployment and speed measurements.
    """
    sch = get_scheme(scheme)
    targets = select_targets(model, include, exclude, layers=layers)
    if sch.name == "spatial":  # 1-wide conv kernels have no spatial split
        targets = {
            n: m
            for n, m in targets.items()
            if isinstance(m, nn.Linear) or min(ConvGeometry.of(m).kernel_size) > 1
        }
    geoms = {n: ConvGeometry.of(m) for n, m in targets.items()}
    schemes = {n: layer_scheme(m, sch) for n, m in targets.items()}
    pixels = output_positions(model, targets, input_size)
    dense_total = count_flops(model, input_size)

    def saving(name: str, rank: int) -> int:
        g, s = geoms[name], schemes[name]
        return (s.dense_macs_per_pixel(g) - s.factorized_macs_per_pixel(g, rank)) * pixels[name]

    def worth_it(name: str, rank: int) -> bool:
        g, s = geoms[name], schemes[name]
        dense, low = s.dense_macs_per_pixel(g), s.factorized_macs_per_pixel(g, rank)
        return rank <= s.full_rank(g) and dense >= min_layer_reduction * low

    def plan_for(alpha: float) -> dict[str, int]:
        plan = {}
        for name, g in geoms.items():
            full = schemes[name].full_rank(g)
            rank = max(multiple, round(alpha * full / multiple) * multiple)
            if worth_it(name, rank):
                plan[name] = rank
        return plan

    def reduction(plan: dict[str, int]) -> float:
        return dense_total / (dense_total - sum(saving(n, r) for n, r in plan.items()))

    best = plan_for(0.0)
    if reduction(best) < macs_reduction:
        raise ValueError(
            f"the {sch.name} scheme cannot cut this model's MACs {macs_reduction}x with ranks "
            f"that are multiples of {multiple}: at most {reduction(best):.2f}x"
        )
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if reduction(plan_for(mid)) >= macs_reduction:
            lo = mid
        else:
            hi = mid
    plan = plan_for(lo)
    while True:
        steps = sorted(
            (saving(n, r) - saving(n, r + multiple), n)
            for n, r in plan.items()
            if worth_it(n, r + multiple)
        )
        for _, name in steps:
            trial = {**plan, name: plan[name] + multiple}
            if reduction(trial) >= macs_reduction:
                plan = trial
                break
        else:
            return plan


def padded_rank(scheme: str | Scheme, geom: ConvGeometry, rank: int, multiple: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, or ``rank`` itself when the rounded
    rank would no longer lower the layer's MACs."""
    padded = -(-rank // multiple) * multiple
    return padded if get_scheme(scheme).lowers_cost(geom, padded) else rank


def padded_plan(
    plan: Mapping[str, int], geoms: Mapping[str, ConvGeometry], scheme: str, multiple: int = 16
) -> dict[str, int]:
    """The ranks ``pad_ranks`` gives a model factorized by ``plan`` (same speed as it).

    ``geoms``: each layer's ``ConvGeometry.of``; a Linear's is a ``1 x 1`` stride-1 conv's,
    which the channel and spatial schemes price alike, so it pads as ``pad_ranks`` pads it.
    """
    return {n: padded_rank(scheme, geoms[n], r, multiple) for n, r in plan.items()}


@torch.no_grad()
def pad_ranks(model: nn.Module, multiple: int = 16) -> nn.Module:
    """Copy of a factorized model whose ranks are rounded up to multiples of ``multiple``.

    The added rank components are zero (zero rows in ``first``, zero columns in
    ``second``), so the model computes exactly the same function; it only gets
    hardware-friendly channel counts. A layer (``FactorizedConv2d`` or ``FactorizedLinear``)
    is left as it is when the padded rank would no longer lower its MACs.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    new = copy.deepcopy(model)
    for name, layer in list(new.named_modules()):
        if not isinstance(layer, (FactorizedConv2d, FactorizedLinear)):
            continue
        scheme = "channel" if isinstance(layer, FactorizedLinear) else layer.scheme
        rank = padded_rank(scheme, layer.geom, layer.rank, multiple)
        if rank == layer.rank:
            continue
        first, second = layer.first.weight.detach(), layer.second.weight.detach()
        first = torch.cat([first, first.new_zeros((rank - layer.rank, *first.shape[1:]))])
        pad_second = second.new_zeros((second.shape[0], rank - layer.rank, *second.shape[2:]))
        second = torch.cat([second, pad_second], dim=1)
        bias = layer.bias.detach() if layer.bias is not None else None
        padded: FactorizedConv2d | FactorizedLinear
        if isinstance(layer, FactorizedLinear):
            padded = FactorizedLinear.from_factors(first, second, bias)
        else:
            padded = FactorizedConv2d.from_factors(layer.geom, scheme, first, second, bias)
        padded.train(layer.training)
        set_submodule(new, name, padded)
    return new
