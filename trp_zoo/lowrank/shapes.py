"""Where each conv of a model sits: its input and output height and width for one image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

HW = tuple[int, int]


def conv_shapes(
    model: nn.Module, names: Iterable[str], input_size: Sequence[int]
) -> dict[str, tuple[HW, HW]]:
    """``{name: (input (h, w), output (h, w))}`` of each named module, from one forward pass
    of a zero image of ``input_size`` (C, H, W) in eval mode (the model's mode is restored)."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[HW, HW]] = {}

    def record(name: str, inp: torch.Tensor, out: torch.Tensor) -> None:
        shapes[name] = (
            (int(inp.shape[-2]), int(inp.shape[-1])),
            (int(out.shape[-2]), int(out.shape[-1])),
        )

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
