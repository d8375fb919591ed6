"""Where each layer of a model sits: the shapes it sees for one image.

A conv is placed by its input and output height and width; a Linear by its token count,
the number of positions per image it applies its weight to (the product of its input's
leading dimensions: ``tokens`` for a ViT block, ``H * W`` for ConvNeXt's channels-last
MLP, windows times window tokens for Swin). All come from one forward pass of a zero
image, recorded by forward hooks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

HW = tuple[int, int]
Shape = tuple[int, ...]


def io_shapes(
    model: nn.Module, names: Iterable[str], input_size: Sequence[int]
) -> dict[str, tuple[Shape, Shape]]:
    """``{name: (input shape, output shape)}`` of each named module (batch dimension
    included), from one forward pass of a zero image of ``input_size`` (C, H, W) in eval
    mode (the model's mode is restored). A module called more than once keeps its last call."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[Shape, Shape]] = {}

    def record(name: str, inp: torch.Tensor, out: torch.Tensor) -> None:
        shapes[name] = (tuple(int(v) for v in inp.shape), tuple(int(v) for v in out.shape))

    hooks = [
        modules[name].register_forward_hook(
            lambda _m, args, out, name=name: record(name, args[0], out)
        )
        for name in names
    ]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


def conv_shapes(
    model: nn.Module, names: Iterable[str], input_size: Sequence[int]
) -> dict[str, tuple[HW, HW]]:
    """``{name: (input (h, w), output (h, w))}`` of each named conv for one image of
    ``input_size`` (C, H, W)."""
    return {
        name: ((i[-2], i[-1]), (o[-2], o[-1]))
        for name, (i, o) in io_shapes(model, names, input_size).items()
    }


def tokens_of(input_shape: Shape) -> int:
    """Positions a Linear applies its weight to, for an input of ``input_shape`` (features
    last): the product of the leading dimensions, batch included."""
    return math.prod(input_shape[:-1])


def linear_tokens(
    model: nn.Module, names: Iterable[str], input_size: Sequence[int]
) -> dict[str, int]:
    """``{name: tokens}``: positions per image each named Linear applies its weight to."""
    return {name: tokens_of(i) for name, (i, _) in io_shapes(model, names, input_size).items()}


def output_positions(
    model: nn.Module, layers: Mapping[str, nn.Module], input_size: Sequence[int]
) -> dict[str, int]:
    """``{name: positions}`` per image: output pixels of a conv, tokens of a Linear (what a
    layer's per-position MACs are multiplied by), from one forward pass."""
    return {
        name: tokens_of(i) if isinstance(layers[name], nn.Linear) else o[-2] * o[-1]
        for name, (i, o) in io_shapes(model, layers, input_size).items()
    }
