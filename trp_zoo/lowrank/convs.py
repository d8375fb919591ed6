"""What the library knows about ``nn.Conv2d`` and timm's variants of it.

``ConvGeometry`` holds everything needed to rebuild a conv's function from factors;
``effective_weight`` returns the weight the conv actually applies (timm's
weight-standardized convs transform theirs in ``forward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import Tensor, nn

_DYNAMIC_SAME = (Conv2dSame, StdConv2dSame, ScaledStdConv2dSame)
_STANDARDIZED = (StdConv2d, StdConv2dSame)
_SCALED_STANDARDIZED = (ScaledStdConv2d, ScaledStdConv2dSame)
_KNOWN = (nn.Conv2d, *_DYNAMIC_SAME, *_STANDARDIZED, *_SCALED_STANDARDIZED)

Pair = tuple[int, int]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


@dataclass(frozen=True)
class ConvGeometry:
    """Shape and sliding-window parameters of a 2-D convolution."""

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair | str = (0, 0)
    dilation: Pair = (1, 1)
    padding_mode: PaddingMode = "zeros"
    bias: bool = False
    dynamic_same: bool = False  # timm's *Same convs: pad the input in forward

    @classmethod
    def of(cls, conv: nn.Conv2d | nn.Linear) -> ConvGeometry:
        """The geometry of a conv, or of the ``1 x 1`` conv an ``nn.Linear`` is per token."""
        if isinstance(conv, nn.Linear):
            return cls.of_linear(conv.in_features, conv.out_features, conv.bias is not None)
        return cls(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=_pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=conv.padding if isinstance(conv.padding, str) else _pair(conv.padding),
            dilation=_pair(conv.dilation),
            padding_mode=cast(PaddingMode, conv.padding_mode),
            bias=conv.bias is not None,
            dynamic_same=isinstance(conv, _DYNAMIC_SAME),
        )

    @classmethod
    def of_linear(cls, in_features: int, out_features: int, bias: bool) -> ConvGeometry:
        """The ``1 x 1`` stride-1 conv a Linear ``in_features -> out_features`` is per token."""
        return cls(in_features, out_features, (1, 1), bias=bias)

    def build_conv(self) -> nn.Conv2d:
        """A plain dense conv of this geometry (timm's ``Conv2dSame`` for dynamic padding)."""
        if self.dynamic_same:
            return Conv2dSame(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                self.stride,
                0,
                self.dilation,
                bias=self.bias,
            )
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias,
            padding_mode=self.padding_mode,
        )

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ConvGeometry:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})  # type: ignore[arg-type]


def _pair(v: int | tuple[int, ...]) -> Pair:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why a conv cannot be factorized (None when it can)."""
    if not isinstance(conv, nn.Conv2d):
        return "not an nn.Conv2d"
    if conv.groups != 1:
        return "grouped or depthwise conv"
    if type(conv) not in _KNOWN and type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} overrides forward in a way this library does not model"
    return None


def is_plain(conv: nn.Module) -> bool:
    """True when the conv applies its ``weight`` parameter as stored (no standardization)."""
    return not isinstance(conv, _STANDARDIZED + _SCALED_STANDARDIZED)


@torch.no_grad()
def effective_weight(conv: nn.Conv2d) -> Tensor:
    """The kernel the conv applies in ``forward`` (detached)."""
    w = conv.weight.detach()
    if isinstance(conv, _STANDARDIZED + _SCALED_STANDARDIZED):
        scale = None
        if isinstance(conv, _SCALED_STANDARDIZED):
            scale = (conv.gain * conv.scale).reshape(-1)
        w = F.batch_norm(
            w.reshape(1, conv.out_channels, -1),
            None,
            None,
            weight=scale,
            training=True,
            momentum=0.0,
            eps=conv.eps,
        ).reshape_as(w)
    return w
