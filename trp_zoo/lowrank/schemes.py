"""Decomposition schemes: how a conv kernel becomes a matrix and two thin convs.

- ``channel`` (Zhang et al. 2016): ``W`` as ``N x (C*kh*kw)``; a ``kh x kw`` conv to
  ``r`` channels followed by a 1x1 conv to ``N``.
- ``spatial`` (Jaderberg et al. 2014): ``W`` permuted to ``(C*kh) x (N*kw)``; a
  vertical ``kh x 1`` conv to ``r`` channels followed by a horizontal ``1 x kw`` conv.

Singular values are split as ``sqrt(s)`` into both factors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from .convs import ConvGeometry
from .macs import conv_macs


class Scheme(ABC):
    """A low-rank factorization of a conv kernel."""

    name: str

    @abstractmethod
    def to_matrix(self, weight: Tensor) -> Tensor:
        """Reshape an ``N x C x kh x kw`` kernel to the matrix this scheme factorizes."""

    @abstractmethod
    def from_matrix(self, matrix: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Inverse of ``to_matrix`` for a kernel of ``shape``."""

    @abstractmethod
    def factor_weights(
        self, u: Tensor, s: Tensor, vh: Tensor, geom: ConvGeometry
    ) -> tuple[Tensor, Tensor]:
        """Kernels of the first and second conv from a rank-r SVD ``u diag(s) vh``."""

    @abstractmethod
    def combine(self, first: Tensor, second: Tensor, geom: ConvGeometry) -> Tensor:
        """The dense ``N x C x kh x kw`` kernel equal to ``second(first(x))``."""

    @abstractmethod
    def layers(self, geom: ConvGeometry, rank: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        """The two (uninitialized) convs that replace a conv of ``geom`` at ``rank``."""

    @abstractmethod
    def factorized_macs_per_pixel(self, geom: ConvGeometry, rank: int) -> int:
        """Multiply-adds per output pixel of the factorized pair."""

    def full_rank(self, geom: ConvGeometry) -> int:
        rows, cols = self.matrix_shape(geom)
        return min(rows, cols)

    @abstractmethod
    def matrix_shape(self, geom: ConvGeometry) -> tuple[int, int]:
        """Shape of the matrix ``to_matrix`` produces."""

    def dense_macs_per_pixel(self, geom: ConvGeometry) -> int:
        return conv_macs(geom.in_channels, geom.out_channels, geom.kernel_size)

    def lowers_cost(self, geom: ConvGeometry, rank: int) -> bool:
        """True when ``rank`` makes the factorized pair cheaper than the dense conv."""
        return self.factorized_macs_per_pixel(geom, rank) < self.dense_macs_per_pixel(geom)

    def max_useful_rank(self, geom: ConvGeometry) -> int:
        """Largest rank that still lowers the cost (0 when none does)."""
        lo, hi = 0, self.full_rank(geom)
        while lo < hi:  # lowers_cost is monotone in rank
            mid = (lo + hi + 1) // 2
            if self.lowers_cost(geom, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _padding_part(padding: tuple[int, int] | str, axis: int) -> tuple[int, int] | str:
    """Padding for a conv that slides along one axis only (0: vertical, 1: horizontal)."""
    if isinstance(padding, str):
        return padding
    return (padding[0], 0) if axis == 0 else (0, padding[1])


class ChannelScheme(Scheme):
    name = "channel"

    def to_matrix(self, weight: Tensor) -> Tensor:
        return weight.reshape(weight.shape[0], -1)

    def from_matrix(self, matrix: Tensor, shape: tuple[int, ...]) -> Tensor:
        return matrix.reshape(shape)

    def matrix_shape(self, geom: ConvGeometry) -> tuple[int, int]:
        kh, kw = geom.kernel_size
        return geom.out_channels, geom.in_channels * kh * kw

    def factor_weights(
        self, u: Tensor, s: Tensor, vh: Tensor, geom: ConvGeometry
    ) -> tuple[Tensor, Tensor]:
        root = s.sqrt()
        rank = s.numel()
        first = (root[:, None] * vh).reshape(rank, geom.in_channels, *geom.kernel_size)
        second = (u * root[None, :]).reshape(geom.out_channels, rank, 1, 1)
        return first, second

    def combine(self, first: Tensor, second: Tensor, geom: ConvGeometry) -> Tensor:
        rank = first.shape[0]
        matrix = second.reshape(geom.out_channels, rank) @ first.reshape(rank, -1)
        return matrix.reshape(geom.out_channels, geom.in_channels, *geom.kernel_size)

    def layers(self, geom: ConvGeometry, rank: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        padding = (0, 0) if geom.dynamic_same else geom.padding
        first = nn.Conv2d(
            geom.in_channels,
            rank,
            geom.kernel_size,
            stride=geom.stride,
            padding=padding,
            dilation=geom.dilation,
            bias=False,
            padding_mode=geom.padding_mode,
        )
        second = nn.Conv2d(rank, geom.out_channels, 1, bias=geom.bias)
        return first, second

    def factorized_macs_per_pixel(self, geom: ConvGeometry, rank: int) -> int:
        first = conv_macs(geom.in_channels, rank, geom.kernel_size)
        return first + conv_macs(rank, geom.out_channels, (1, 1))


class SpatialScheme(Scheme):
    name = "spatial"

    def to_matrix(self, weight: Tensor) -> Tensor:
        n, c, kh, kw = weight.shape
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)

    def from_matrix(self, matrix: Tensor, shape: tuple[int, ...]) -> Tensor:
        n, c, kh, kw = shape
        return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()

    def matrix_shape(self, geom: ConvGeometry) -> tuple[int, int]:
        kh, kw = geom.kernel_size
        return geom.in_channels * kh, geom.out_channels * kw

    def factor_weights(
        self, u: Tensor, s: Tensor, vh: Tensor, geom: ConvGeometry
    ) -> tuple[Tensor, Tensor]:
        root = s.sqrt()
        rank = s.numel()
        kh, kw = geom.kernel_size
        first = (u * root[None, :]).T.reshape(rank, geom.in_channels, kh, 1)
        second = (
            (root[:, None] * vh)
            .reshape(rank, geom.out_channels, kw)
            .permute(1, 0, 2)
            .reshape(geom.out_channels, rank, 1, kw)
        )
        return first, second

    def combine(self, first: Tensor, second: Tensor, geom: ConvGeometry) -> Tensor:
        rank = first.shape[0]
        kh, kw = geom.kernel_size
        u = first.reshape(rank, geom.in_channels * kh).T
        vh = second.reshape(geom.out_channels, rank, kw).permute(1, 0, 2).reshape(rank, -1)
        return self.from_matrix(u @ vh, (geom.out_channels, geom.in_channels, kh, kw))

    def layers(self, geom: ConvGeometry, rank: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        kh, kw = geom.kernel_size
        (sh, sw), (dh, dw) = geom.stride, geom.dilation
        padding: tuple[int, int] | str = (0, 0) if geom.dynamic_same else geom.padding
        first = nn.Conv2d(
            geom.in_channels,
            rank,
            (kh, 1),
            stride=(sh, 1),
            padding=_padding_part(padding, 0),
            dilation=(dh, 1),
            bias=False,
            padding_mode=geom.padding_mode,
        )
        second = nn.Conv2d(
            rank,
            geom.out_channels,
            (1, kw),
            stride=(1, sw),
            padding=_padding_part(padding, 1),
            dilation=(1, dw),
            bias=geom.bias,
            padding_mode=geom.padding_mode,
        )
        return first, second

    def factorized_macs_per_pixel(self, geom: ConvGeometry, rank: int) -> int:
        # the vertical conv runs at the input width, about stride_w times the output width
        kh, kw = geom.kernel_size
        first = conv_macs(geom.in_channels, rank, (kh, 1), pixels=geom.stride[1])
        return first + conv_macs(rank, geom.out_channels, (1, kw))


SCHEMES: dict[str, Scheme] = {s.name: s for s in (ChannelScheme(), SpatialScheme())}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Look up a scheme by name (``channel`` or ``spatial``)."""
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown scheme {scheme!r}; choose one of {', '.join(sorted(SCHEMES))}"
        ) from None
