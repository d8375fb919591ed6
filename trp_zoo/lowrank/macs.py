"""Multiply-accumulate and parameter counts: of whole models, measured with
``torch.utils.flop_counter``, and of one convolution, by its formula (the schemes' cost
model and the runtime's probe graphs both use ``conv_macs``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..modules import unwrap_model


def conv_macs(
    in_channels: int, out_channels: int, kernel_size: tuple[int, int], pixels: int = 1
) -> int:
    """Multiply-adds of a dense ``kh x kw`` convolution over ``pixels`` output pixels."""
    kh, kw = kernel_size
    return in_channels * out_channels * kh * kw * pixels


def _cpu_attention_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: object,
    **kwargs: object,
) -> int:
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


# the fused attention kernel ``F.scaled_dot_product_attention`` runs on CPU, which the flop
# counter does not know (it counts the CUDA kernels): without it a ViT's attention is 0 MACs
_UNCOUNTED_ATTENTION = {
    op: _cpu_attention_flops
    for op in (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),)
    if op is not None
}


def _input_for(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    if len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise ValueError(
            f"input_size must be (C, H, W) with positive ints, got {tuple(input_size)!r}"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, *input_size, device=device, dtype=dtype)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates (MACs) for one image of ``input_size = (C, H, W)``.

    Counts the matrix and convolution work PyTorch's flop counter sees (conv, linear,
    matmul, attention); element-wise ops are not counted, as is usual for MACs.
    """
    model = unwrap_model(model)
    x = _input_for(model, input_size)
    was_training = model.training
    # the counter's module tracker cannot hook a view of a parameter that a model passes
    # on as a module input (timm's PiT and CaiT cls tokens) while it requires grad
    grads = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in grads:
            p.requires_grad_(False)
        with FlopCounterMode(display=False, custom_mapping=_UNCOUNTED_ATTENTION) as counter:
            model(x)
    except RuntimeError as err:
        raise ValueError(
            f"the model does not accept an input of size {tuple(input_size)} (C, H, W): {err}"
        ) from err
    finally:
        for p in grads:
            p.requires_grad_(True)
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in unwrap_model(model).parameters())


@dataclass(frozen=True)
class CostComparison:
    """Dense vs factorized cost of one model pair."""

    dense_macs: int
    factorized_macs: int
    dense_params: int
    factorized_params: int

    @property
    def macs_reduction(self) -> float:
        """How many times fewer MACs the factorized model needs."""
        return self.dense_macs / max(self.factorized_macs, 1)

    @property
    def params_reduction(self) -> float:
        return self.dense_params / max(self.factorized_params, 1)


def compare_cost(
    dense: nn.Module, factorized: nn.Module, input_size: Sequence[int]
) -> CostComparison:
    """MACs and parameters of a dense model and its factorized version, in one call."""
    return CostComparison(
        dense_macs=count_flops(dense, input_size),
        factorized_macs=count_flops(factorized, input_size),
        dense_params=count_params(dense),
        factorized_params=count_params(factorized),
    )
