"""Probe graphs: one layer, or its factorized pair, as a small ONNX model to time alone.

A conv probe (``LayerProbe``) is one ``Conv`` or the scheme's two, at the conv's input
height and width. A Linear probe (``LinearProbe``) is what the exporter makes of an
``nn.Linear`` and of a ``FactorizedLinear``: ``MatMul`` by the transposed weight (then
``Add`` of the bias), or ``MatMul`` by ``A^T``, ``MatMul`` by ``B^T``, ``Add``; its input is
``(batch, 1, tokens, in_features)``, the same GEMM as the layer's real leading dimensions
(``(batch, tokens)`` in a ViT, ``(batch, H, W)`` channels-last) with the four dimensions
every engine input has.

Weights of the probe graphs are random: fp32 kernels run at the same speed whatever
their values (int8 probes are quantized like the model's engines). Padding modes other
than zeros become a ``Pad`` node (``circular`` is timed as ``edge``, which moves the same
data); timm's dynamic 'same' padding becomes the static padding it computes for this
input size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from trp_zoo.lowrank.convs import ConvGeometry
from trp_zoo.lowrank.macs import conv_macs
from trp_zoo.lowrank.schemes import Scheme, get_scheme

from .export import DEFAULT_OPSET

PROBE_INPUT = "input"
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "edge"}


@dataclass(frozen=True)
class ConvSpec:
    """One ONNX ``Conv`` of a probe graph (pads as ONNX orders them: top, left, bottom, right)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation: tuple[int, int]
    bias: bool
    pad_mode: str  # "zeros" or an ONNX Pad mode applied before the conv
    in_hw: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        top, left, bottom, right = self.pads
        (h, w), (kh, kw), (dh, dw) = self.in_hw, self.kernel, self.dilation
        h_span = h + top + bottom - dh * (kh - 1) - 1
        w_span = w + left + right - dw * (kw - 1) - 1
        return h_span // self.stride[0] + 1, w_span // self.stride[1] + 1

    @property
    def macs(self) -> int:
        """Multiply-adds per image."""
        h, w = self.out_hw
        return conv_macs(self.in_channels, self.out_channels, self.kernel, h * w)


def _same_pads(kernel: int, stride: int, dilation: int, size: int) -> tuple[int, int]:
    """timm's ``pad_same``: the padding TF's 'SAME' needs for this input size."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":  # PyTorch's 'same' (stride 1): the extra pixel goes at the end
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    ph, pw = (int(v) for v in conv.padding)
    return (ph, pw, ph, pw)


def _spec(conv: nn.Conv2d, in_hw: tuple[int, int], pads: tuple[int, int, int, int] | None):
    return ConvSpec(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel=(conv.kernel_size[0], conv.kernel_size[1]),
        stride=(conv.stride[0], conv.stride[1]),
        pads=pads if pads is not None else _pads(conv, in_hw),
        dilation=(conv.dilation[0], conv.dilation[1]),
        bias=conv.bias is not None,
        pad_mode=_PAD_MODES.get(conv.padding_mode, "zeros"),
        in_hw=in_hw,
    )


@dataclass(frozen=True)
class LayerProbe:
    """A conv to time in isolation: its scheme, geometry and input height and width."""

    scheme: str
    geom: ConvGeometry
    input_hw: tuple[int, int]

    def describe(self) -> str:
        """``in->out kxk/stride @HxW``."""
        g = self.geom
        kh, kw = g.kernel_size
        return (
            f"{g.in_channels}->{g.out_channels} {kh}x{kw}/{g.stride[0]} "
            f"@{self.input_hw[0]}x{self.input_hw[1]}"
        )

    def key(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "geometry": self.geom.to_dict(),
            "input_hw": list(self.input_hw),
        }

    def _dense_conv(self) -> nn.Conv2d:
        g = self.geom
        return nn.Conv2d(
            g.in_channels,
            g.out_channels,
            g.kernel_size,
            stride=g.stride,
            padding=(0, 0) if g.dynamic_same else g.padding,
            dilation=g.dilation,
            bias=True,  # batch norm folds into a bias at export
            padding_mode=g.padding_mode,
        )

    def _dynamic_pads(self) -> tuple[int, int, int, int] | None:
        g = self.geom
        if not g.dynamic_same:
            return None
        top, bottom = _same_pads(g.kernel_size[0], g.stride[0], g.dilation[0], self.input_hw[0])
        left, right = _same_pads(g.kernel_size[1], g.stride[1], g.dilation[1], self.input_hw[1])
        return (top, left, bottom, right)

    def convs(self, rank: int | None) -> list[ConvSpec]:
        """The ``Conv`` nodes of the dense layer (``rank=None``) or of its factorization."""
        dynamic = self._dynamic_pads()
        with torch.device("meta"):  # shapes only: no weights are allocated
            if rank is None:
                return [_spec(self._dense_conv(), self.input_hw, dynamic)]
            first, second = get_scheme(self.scheme).layers(self.geom, rank)
        a = _spec(first, self.input_hw, dynamic)
        b = _spec(second, a.out_hw, None)
        return [a, ConvSpec(**{**asdict(b), "bias": True})]

    def macs(self, rank: int | None) -> int:
        """Multiply-adds per image of the dense layer or its rank-``rank`` factorization."""
        return sum(c.macs for c in self.convs(rank))

    def graph(self, rank: int | None, batch: int | str = "batch", opset: int = DEFAULT_OPSET):
        """The probe as an ONNX model: input ``(batch, C, H, W)``, one output."""
        rng = np.random.default_rng(0)
        nodes, inits = [], []
        x = PROBE_INPUT
        convs = self.convs(rank)
        for i, c in enumerate(convs):
            if c.pad_mode != "zeros":
                pads = np.array([0, 0, c.pads[0], c.pads[1], 0, 0, c.pads[2], c.pads[3]])
                inits.append(numpy_helper.from_array(pads.astype(np.int64), f"pads{i}"))
                nodes.append(
                    helper.make_node("Pad", [x, f"pads{i}"], [f"padded{i}"], mode=c.pad_mode)
                )
                x = f"padded{i}"
            fan_in = c.in_channels * c.kernel[0] * c.kernel[1]
            w = rng.standard_normal((c.out_channels, c.in_channels, *c.kernel), dtype=np.float32)
            inits.append(numpy_helper.from_array(w / np.float32(math.sqrt(fan_in)), f"w{i}"))
            inputs = [x, f"w{i}"]
            if c.bias:
                inits.append(numpy_helper.from_array(np.zeros(c.out_channels, np.float32), f"b{i}"))
                inputs.append(f"b{i}")
            out = f"y{i}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    inputs,
                    [out],
                    kernel_shape=list(c.kernel),
                    strides=list(c.stride),
                    dilations=list(c.dilation),
                    pads=[0, 0, 0, 0] if c.pad_mode != "zeros" else list(c.pads),
                )
            )
            x = out
        return _probe_model(
            nodes,
            inits,
            [batch, self.geom.in_channels, *self.input_hw],
            x,
            [batch, convs[-1].out_channels, *convs[-1].out_hw],
            opset,
        )


def _probe_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    in_shape: list[int | str],
    output: str,
    out_shape: list[int | str],
    opset: int,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info(PROBE_INPUT, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)  # readable by older runtimes
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class LinearProbe:
    """A Linear to time in isolation: its geometry (the ``1 x 1`` conv it is per token,
    ``ConvGeometry.of``) and its token count per image (``trp_zoo.lowrank.shapes``).

    Linears are factorized by the channel scheme whatever the model's scheme is.
    """

    geom: ConvGeometry
    tokens: int
    scheme: str = field(default="channel", init=False)

    def describe(self) -> str:
        """``linear in->out x tokens``."""
        return f"linear {self.geom.in_channels}->{self.geom.out_channels} x{self.tokens} tokens"

    def key(self) -> dict[str, Any]:
        return {
            "kind": "linear",
            "scheme": self.scheme,
            "in_features": self.geom.in_channels,
            "out_features": self.geom.out_channels,
            "bias": self.geom.bias,
            "tokens": self.tokens,
        }

    def matmuls(self, rank: int | None) -> list[tuple[int, int]]:
        """``(in, out)`` of each ``MatMul`` of the dense layer (``rank=None``) or of its
        factorization."""
        c, n = self.geom.in_channels, self.geom.out_channels
        return [(c, n)] if rank is None else [(c, rank), (rank, n)]

    def macs(self, rank: int | None) -> int:
        """Multiply-adds per image of the dense layer or its rank-``rank`` factorization."""
        return sum(conv_macs(i, o, (1, 1), self.tokens) for i, o in self.matmuls(rank))

    def graph(self, rank: int | None, batch: int | str = "batch", opset: int = DEFAULT_OPSET):
        """The probe as an ONNX model: input ``(batch, 1, tokens, in_features)``."""
        rng = np.random.default_rng(0)
        nodes, inits = [], []
        x = PROBE_INPUT
        for i, (fan_in, fan_out) in enumerate(self.matmuls(rank)):
            w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
            inits.append(numpy_helper.from_array(w / np.float32(math.sqrt(fan_in)), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"]))
            x = f"y{i}"
        out = self.geom.out_channels
        if self.geom.bias:
            inits.append(numpy_helper.from_array(np.zeros(out, np.float32), "bias"))
            nodes.append(helper.make_node("Add", [x, "bias"], ["out"]))
            x = "out"
        shape: list[int | str] = [batch, 1, self.tokens]
        return _probe_model(nodes, inits, [*shape, self.geom.in_channels], x, [*shape, out], opset)


Probe = LayerProbe | LinearProbe


def candidate_ranks(
    scheme: str | Scheme, geom: ConvGeometry, step: int = 8, limit: int = 32
) -> list[int]:
    """Ranks worth timing: multiples of ``step`` that lower the layer's MACs.

    When there are more than ``limit`` of them the step doubles (8, 16, 32, ...) until they
    fit, so large layers are sampled on coarser, still aligned, multiples.
    """
    if step < 1 or limit < 1:
        raise ValueError(f"rank step and candidate limit must be >= 1, got {step} and {limit}")
    top = get_scheme(scheme).max_useful_rank(geom)
    while top // step > limit:
        step *= 2
    return list(range(step, top + 1, step))
