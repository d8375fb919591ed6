"""Factorized layers compute the rank-r projected conv, for every conv geometry."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same
from torch import nn

from trp_zoo import FactorizedConv2d, decompose, densify, get_scheme, rank_plan
from trp_zoo.algorithms.decompose import project_weights
from trp_zoo.lowrank.convs import ConvGeometry, effective_weight
from trp_zoo.lowrank.svd import exact_svd

CONVS = {
    "3x3": lambda: nn.Conv2d(16, 24, 3, padding=1),
    "stride2": lambda: nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False),
    "dilation2": lambda: nn.Conv2d(16, 24, 3, padding=2, dilation=2),
    "bias": lambda: nn.Conv2d(16, 24, 3, padding=1, bias=True),
    "1x1": lambda: nn.Conv2d(32, 48, 1),
    "1x1_stride2": lambda: nn.Conv2d(32, 48, 1, stride=2),
    "5x5": lambda: nn.Conv2d(16, 24, 5, padding=2),
    "3x1": lambda: nn.Conv2d(16, 24, (3, 1), padding=(1, 0)),
    "3x5_asym_stride": lambda: nn.Conv2d(16, 24, (3, 5), stride=(2, 1), padding=(0, 2)),
    "same": lambda: nn.Conv2d(16, 24, 3, padding="same"),
    "same_4x4_dilated": lambda: nn.Conv2d(16, 24, 4, padding="same", dilation=2),
    "valid": lambda: nn.Conv2d(16, 24, 3, padding="valid"),
    "reflect": lambda: nn.Conv2d(16, 24, 3, padding=1, padding_mode="reflect"),
    "circular": lambda: nn.Conv2d(16, 24, 3, padding=(1, 2), padding_mode="circular"),
    "replicate_stride2": lambda: nn.Conv2d(
        16, 24, 3, stride=2, padding=1, padding_mode="replicate"
    ),
    "timm_conv2d_same_stride2": lambda: Conv2dSame(16, 24, 3, stride=2),
    "timm_std_conv": lambda: StdConv2d(16, 24, 3, padding=1),
    "timm_scaled_std_conv": lambda: ScaledStdConv2d(16, 24, 3, padding=1),
}
STD_SAME = {
    "timm_std_conv_same_stride2": lambda: StdConv2dSame(16, 24, 3, stride=2),
    "timm_scaled_std_conv_same_stride2": lambda: ScaledStdConv2dSame(16, 24, 3, stride=2),
}


def reference(conv: nn.Conv2d, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The conv applied with ``weight`` in place of its effective kernel."""
    if ConvGeometry.of(conv).dynamic_same:
        x = pad_same(x, list(conv.kernel_size), list(conv.stride), list(conv.dilation))
        padding = (0, 0)
    else:
        padding = conv.padding
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = (0, 0)
    return F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation)


def projected_weight(conv: nn.Conv2d, scheme: str, rank: int) -> torch.Tensor:
    sch = get_scheme(scheme)
    w = effective_weight(conv)
    u, s, vh = exact_svd(sch.to_matrix(w))
    return sch.from_matrix(((u[:, :rank] * s[:rank]) @ vh[:rank]).float(), tuple(w.shape))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_factorized_equals_projected_dense(kind: str, scheme: str) -> None:
    conv = CONVS[kind]()
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    sch = get_scheme(scheme)
    rank = max(1, sch.max_useful_rank(ConvGeometry.of(conv)) // 2)
    model = nn.Sequential(conv)
    out = decompose(model, scheme, rank={"0": rank})
    layer = out[0]
    assert isinstance(layer, FactorizedConv2d) and layer.rank == rank and layer.scheme == scheme
    assert rank_plan(out) == {"0": rank}
    x = torch.randn(2, 16 if conv.in_channels == 16 else 32, 15, 17)
    with torch.no_grad():
        expected = reference(conv, projected_weight(conv, scheme, rank), x)
        got = out(x)
    assert got.shape == expected.shape
    rel = (got - expected).abs().max() / expected.abs().max()
    assert rel < 1e-4, f"{kind}/{scheme}: relative error {rel:.2e}"
    # the original model is untouched
    assert model[0] is conv and isinstance(model[0], nn.Conv2d)
    # merging the factors back gives a dense conv computing the same function
    with torch.no_grad():
        merged = densify(out)(x)
    assert (merged - expected).abs().max() / expected.abs().max() < 1e-4


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factors_split_singular_values_evenly(scheme: str) -> None:
    conv = nn.Conv2d(8, 12, 3, padding=1)
    layer = decompose(nn.Sequential(conv), scheme, rank={"0": 4})[0]
    sch = get_scheme(scheme)
    # each factor carries sqrt(s): the singular values of the two factor matrices agree
    first = layer.first.weight.detach()
    second = layer.second.weight.detach()
    if scheme == "channel":
        s1 = torch.linalg.svdvals(first.reshape(4, -1))
        s2 = torch.linalg.svdvals(second.reshape(12, 4))
    else:
        s1 = torch.linalg.svdvals(first.reshape(4, -1))
        s2 = torch.linalg.svdvals(second.permute(1, 0, 2, 3).reshape(4, -1))
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-6)
    s = torch.linalg.svdvals(sch.to_matrix(conv.weight.detach()))[:4]
    torch.testing.assert_close(s1 * s2, s, rtol=1e-4, atol=1e-6)


def test_repr_names_scheme_and_rank() -> None:
    layer = FactorizedConv2d(ConvGeometry.of(nn.Conv2d(8, 16, 3)), 5, "spatial")
    text = repr(layer)
    assert "scheme=spatial" in text and "rank=5" in text and "FactorizedConv2d" in text


CHANNEL_CASES = [  # (C, N, kh, kw, r): MACs per output pixel r*(C*kh*kw + N)
    (64, 64, 3, 3, 16),
    (256, 64, 1, 1, 20),
    (16, 32, 5, 5, 7),
]


@pytest.mark.parametrize(("c", "n", "kh", "kw", "r"), CHANNEL_CASES)
def test_macs_match_channel_formula(c: int, n: int, kh: int, kw: int, r: int) -> None:
    from trp_zoo import count_flops

    h = w = 12
    conv = nn.Conv2d(c, n, (kh, kw), padding=(kh // 2, kw // 2))
    model = decompose(nn.Sequential(conv), "channel", rank={"0": r})
    assert count_flops(model, (c, h, w)) == r * (c * kh * kw + n) * h * w
    assert count_flops(nn.Sequential(conv), (c, h, w)) == n * c * kh * kw * h * w


@pytest.mark.parametrize(("stride", "r"), [(1, 8), (2, 5)])
def test_macs_match_spatial_formula(stride: int, r: int) -> None:
    """Vertical conv at the input width, horizontal conv at the output resolution."""
    from trp_zoo import count_flops

    c, n, k, h, w = 32, 48, 3, 16, 16
    conv = nn.Conv2d(c, n, k, stride=stride, padding=1)
    model = decompose(nn.Sequential(conv), "spatial", rank={"0": r})
    h_out = (h + 2 - k) // stride + 1
    w_out = (w + 2 - k) // stride + 1
    expected = r * c * k * h_out * w + n * r * k * h_out * w_out
    assert count_flops(model, (c, h, w)) == expected
    if stride == 1:  # the authors' arithmetic: (C*kh*r + N*r*kw) per output pixel
        assert expected == (c * k * r + n * r * k) * h_out * w_out


def test_only_cost_lowering_ranks_factorize() -> None:
    conv = nn.Conv2d(64, 64, 3, padding=1)
    geom = ConvGeometry.of(conv)
    sch = get_scheme("channel")
    limit = sch.max_useful_rank(geom)
    # r < N*C*k*k / (C*k*k + N) = 64*576/640 = 57.6
    assert limit == 57
    assert sch.lowers_cost(geom, 57) and not sch.lowers_cost(geom, 58)
    with pytest.warns(UserWarning, match="does not lower its cost"):
        out = decompose(nn.Sequential(conv), "channel", rank={"0": 58})
    assert rank_plan(out) == {}
    assert rank_plan(decompose(nn.Sequential(conv), "channel", rank={"0": 57})) == {"0": 57}


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("kind", sorted(CONVS) + sorted(STD_SAME))
def test_project_weights_applies_the_truncated_effective_kernel(kind: str, scheme: str) -> None:
    """The dense reference of the checks: a weight-standardized conv must not standardize its
    truncated kernel again."""
    conv = {**CONVS, **STD_SAME}[kind]()
    if conv.bias is not None:
        nn.init.normal_(conv.bias)
    rank = max(1, get_scheme(scheme).max_useful_rank(ConvGeometry.of(conv)) // 2)
    x = torch.randn(2, conv.in_channels, 15, 17)
    with torch.no_grad():
        expected = reference(conv, projected_weight(conv, scheme, rank), x)
        got = project_weights(nn.Sequential(conv), scheme, {"0": rank})(x)
    rel = (got - expected).abs().max() / expected.abs().max()
    assert rel < 1e-5, f"{kind}/{scheme}: relative error {rel:.2e}"
