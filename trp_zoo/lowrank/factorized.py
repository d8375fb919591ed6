"""``FactorizedConv2d`` and ``FactorizedLinear``: two thin layers standing in for one dense one."""

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

    # nn.Conv2d's attributes, for model code that inspects its convs (e.g. ``.weight.device``)
    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.geom.kernel_size

    @property
    def stride(self) -> tuple[int, int]:
        return self.geom.stride

    @property
    def padding(self) -> tuple[int, int] | str:
        return self.geom.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return self.geom.dilation

    @property
    def groups(self) -> int:
        return 1

    @property
    def weight(self) -> Tensor:
        """The equivalent dense kernel, computed on access (differentiable; not a parameter)."""
        return get_scheme(self.scheme).combine(self.first.weight, self.second.weight, self.geom)

    @property
    def bias(self) -> Tensor | None:
        return self.second.bias

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
        return self.weight.detach()

    def extra_repr(self) -> str:
        g = self.geom
        return (
            f"{g.in_channels}, {g.out_channels}, kernel_size={g.kernel_size}, stride={g.stride}, "
            f"scheme={self.scheme}, rank={self.rank}"
        )


class FactorizedLinear(nn.Module):
    """A rank-``rank`` factorization of an ``nn.Linear``: ``x -> x A^T -> (.) B^T + bias``.

    ``first`` (``in_features -> rank``, no bias) holds ``A = sqrt(S_r) V_r^T`` and
    ``second`` (``rank -> out_features``) holds ``B = U_r sqrt(S_r)`` and the original
    bias. Both are plain ``nn.Linear``, so any leading dimensions work (tokens,
    channels-last maps) and export gives two ``MatMul``/``Gemm`` nodes.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.rank = int(rank)
        self.first = nn.Linear(in_features, self.rank, bias=False)
        self.second = nn.Linear(self.rank, out_features, bias=bias)

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def geom(self) -> ConvGeometry:
        """The geometry of the ``1 x 1`` conv the replaced Linear is per token."""
        return ConvGeometry.of_linear(self.in_features, self.out_features, self.bias is not None)

    @property
    def weight(self) -> Tensor:
        """The equivalent dense ``out x in`` weight, computed on access (differentiable)."""
        return self.second.weight @ self.first.weight

    @property
    def bias(self) -> Tensor | None:
        return self.second.bias

    @classmethod
    def from_factors(cls, first: Tensor, second: Tensor, bias: Tensor | None) -> FactorizedLinear:
        """Build the module from ``A`` (``rank x in``), ``B`` (``out x rank``) and a bias."""
        module = cls(first.shape[1], second.shape[0], first.shape[0], bias=bias is not None)
        module.to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            module.first.weight.copy_(first)
            module.second.weight.copy_(second)
            if bias is not None:
                assert module.second.bias is not None
                module.second.bias.copy_(bias)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight (rank ``rank``), mostly for checks."""
        return self.weight.detach()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


FACTORIZED_TYPES = (FactorizedConv2d, FactorizedLinear)
