"""``FactorizedConv2d``: two thin convs standing in for one dense conv."""

from __future__ import annotations

import torch
from timm.layers.padding import pad_same
from torch import Tensor, nn

from .convs import ConvGeometry
from .schemes import Scheme, get_scheme


class FactorizedConv2d(nn.Module):
    """A rank-``rank`` factorization of a conv: ``second(first(x))``.

    ``first`` and ``second`` are plain ``nn.Conv2d`` (so ONNX export, TensorRT and
    fusion passes see ordinary convs); the original bias sits on ``second``.
    """

    def __init__(self, geom: ConvGeometry, rank: int, scheme: str | Scheme = "channel") -> None:
        super().__init__()
        self.geom = geom
        self.scheme = get_scheme(scheme).name
        self.rank = int(rank)
        self.first, self.second = get_scheme(scheme).layers(geom, self.rank)

    @property
    def in_channels(self) -> int:
        return self.geom.in_channels

    @property
    def out_channels(self) -> int:
        return self.geom.out_channels

    @classmethod
    def from_factors(
        cls,
        geom: ConvGeometry,
        scheme: str | Scheme,
        first: Tensor,
        second: Tensor,
        bias: Tensor | None,
    ) -> FactorizedConv2d:
        """Build the module and copy in the two kernels (and the dense conv's bias)."""
        module = cls(geom, first.shape[0], scheme).to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            module.first.weight.copy_(first)
            module.second.weight.copy_(second)
            if bias is not None:
                assert module.second.bias is not None
                module.second.bias.copy_(bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        if self.geom.dynamic_same:
            x = pad_same(
                x, list(self.geom.kernel_size), list(self.geom.stride), list(self.geom.dilation)
            )
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        """The equivalent dense kernel (rank ``rank``), mostly for checks."""
        scheme = get_scheme(self.scheme)
        return scheme.combine(self.first.weight.detach(), self.second.weight.detach(), self.geom)

    def extra_repr(self) -> str:
        g = self.geom
        return (
            f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
            f"scheme={self.scheme}, rank={self.rank}"
        )
