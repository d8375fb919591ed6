import pytest
import timm
import torch
from torch import nn

from trp_zoo import RankRatio, compare_cost, count_flops, decompose, get_scheme, rank_plan
from trp_zoo.algorithms.decompose import factorize_architecture, project_weights
from trp_zoo.algorithms.layers import classifier_names, select_targets, stem_names
from trp_zoo.lowrank.convs import ConvGeometry, effective_weight
from trp_zoo.lowrank.factorized import FactorizedConv2d
from trp_zoo.lowrank.svd import exact_svd


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),  # stem
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise
        nn.Conv2d(32, 32, 3, padding=1, groups=4),  # grouped
        nn.Conv2d(32, 32, 1),
        nn.Conv2d(32, 10, 1),  # classifier (last layer)
    )


def test_stem_classifier_grouped_stay_dense_by_default() -> None:
    net = small_net()
    assert stem_names(net) == {"0"} and classifier_names(net) == {"6"}
    assert set(select_targets(net)) == {"2", "5"}
    out = decompose(net, "channel", rank=2)
    assert set(rank_plan(out)) == {"2", "5"}
    assert isinstance(out[3], nn.Conv2d) and isinstance(out[4], nn.Conv2d)


def test_include_selects_stem_by_name_and_exclude_removes() -> None:
    net = small_net()
    assert set(select_targets(net, include=["0", "2"])) == {"0", "2"}
    assert set(select_targets(net, exclude="5")) == {"2"}
    assert set(rank_plan(decompose(net, "channel", rank=2, include="[025]"))) == {"0", "2", "5"}


def test_timm_stem_and_classifier_come_from_pretrained_cfg() -> None:
    model = timm.create_model("resnet26d", num_classes=10)
    assert stem_names(model) == {"conv1.0"}
    assert classifier_names(model) == {"fc"}
    targets = select_targets(model)
    assert "conv1.0" not in targets and "conv1.3" in targets


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown scheme 'tucker'"):
        decompose(small_net(), "tucker", rank=2)


def test_plan_rank_above_full_rank() -> None:
    with pytest.raises(ValueError, match="full rank under the channel scheme is 32"):
        decompose(small_net(), "channel", rank={"5": 33})


def test_plan_names_missing_layer_with_close_match() -> None:
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"'layer1.0.conv3'.*Did you mean.*layer1.0.conv"):
        decompose(model, "channel", rank={"layer1.0.conv3": 4})


def test_plan_names_grouped_conv() -> None:
    with pytest.raises(ValueError, match="grouped or depthwise"):
        decompose(small_net(), "channel", rank={"3": 2})


def test_include_matching_nothing() -> None:
    with pytest.raises(ValueError, match=r"include pattern 'layer9\.\*' matches no conv"):
        decompose(timm.create_model("resnet18"), "channel", rank=4, include="layer9.*")


def test_exclude_matching_nothing() -> None:
    with pytest.raises(ValueError, match="exclude pattern"):
        decompose(small_net(), "channel", rank=4, exclude="nope")


@pytest.mark.parametrize("bad", [None, 1.5, 0, "high"])
def test_bad_rank_argument(bad: object) -> None:
    with pytest.raises(ValueError, match="rank"):
        decompose(small_net(), "channel", rank=bad)  # type: ignore[arg-type]


def test_plan_with_ddp_prefix_and_callable_rank() -> None:
    net = small_net()
    out = decompose(net, "channel", rank={"module.2": 3})
    assert rank_plan(out) == {"2": 3}
    out = decompose(net, "spatial", rank=lambda s: 2)
    assert rank_plan(out) == {"2": 2, "5": 2}


def test_energy_rank_matches_spectrum() -> None:
    net = small_net()
    w = net[2].weight.detach()
    s = torch.linalg.svdvals(w.reshape(32, -1)).double()
    energy = (s**2).cumsum(0) / (s**2).sum()
    expected = int((energy < 0.5).sum()) + 1
    assert rank_plan(decompose(net, "channel", rank=0.5))["2"] == expected


def test_factorize_architecture_rebuilds_the_same_structure() -> None:
    model = timm.create_model("resnet18", num_classes=10)
    dec = decompose(model, "spatial", rank=0.6)
    plan = rank_plan(dec)
    rebuilt = factorize_architecture(timm.create_model("resnet18", num_classes=10), "spatial", plan)
    assert rank_plan(rebuilt) == plan
    rebuilt.load_state_dict(dec.state_dict())  # keys and shapes match exactly
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), dec.eval()(x))


# timm families: plain/deep-stem ResNets, depthwise (EfficientNet with TF 'same'
# padding, MobileNetV3, ConvNeXt), grouped (RegNet, ResNeXt), DenseNet, weight-
# standardized (BiT ResNetV2, NF-ResNet), VGG-style RepVGG, GhostNet, DLA, EdgeNeXt.
ARCHS = [
    "resnet18",
    "resnet26d",
    "tf_efficientnet_b0",
    "mobilenetv3_small_100",
    "convnext_atto",
    "regnetx_002",
    "resnext26ts",
    "densenet121",
    "resnetv2_50x1_bit",
    "nf_resnet26",
    "repvgg_a0",
    "ghostnet_100",
    "dla34",
    "edgenext_xx_small",  # its code reads conv.weight.device
]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("arch", ARCHS)
def test_timm_smoke(arch: str, scheme: str) -> None:
    model = timm.create_model(arch, num_classes=7).eval()
    size = (3, 64, 64)
    dec = decompose(model, scheme, rank=RankRatio(0.25), method="gram", layers="conv")
    plan = rank_plan(dec)
    assert plan, f"{arch}: nothing was factorized"
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert dec(x).shape == (2, 7)
    cost = compare_cost(model, dec, size)
    assert cost.factorized_macs < cost.dense_macs
    # every factorized layer holds the exact rank-r truncation of the conv it replaced
    sch = get_scheme(scheme)
    originals = dict(model.named_modules())
    for name, r in list(plan.items())[:6]:
        conv = originals[name]
        layer = dec.get_submodule(name)
        assert isinstance(layer, FactorizedConv2d)
        u, s, vh = exact_svd(sch.to_matrix(effective_weight(conv)))
        expected = sch.from_matrix(((u[:, :r] * s[:r]) @ vh[:r]).float(), tuple(conv.weight.shape))
        err = (layer.dense_weight() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)
        assert err < 1e-4, f"{arch}/{name}: {err:.2e}"


def _ratio_plan(model: nn.Module, scheme: str, ratio: float) -> dict[str, int]:
    sch = get_scheme(scheme)
    return {
        name: max(1, round(ratio * sch.full_rank(ConvGeometry.of(conv))))
        for name, conv in select_targets(model).items()
    }


def test_resnet50_thirty_percent_plan_halves_macs_and_matches_projection() -> None:
    model = timm.create_model("resnet50").eval()
    plan = _ratio_plan(model, "channel", 0.3)
    dec = decompose(model, "channel", rank=plan)
    assert rank_plan(dec) == plan
    cost = compare_cost(model, dec, (3, 224, 224))
    assert cost.macs_reduction > 2.0, cost
    reference = project_weights(model, "channel", plan)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        got = dec(x)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def test_count_flops_errors_and_values() -> None:
    # timm's resnet18 is quoted at 1.82 GMACs for 3x224x224
    assert count_flops(timm.create_model("resnet18"), (3, 224, 224)) == pytest.approx(
        1.82e9, rel=0.01
    )
    model = timm.create_model("resnet18", in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        count_flops(model, (224, 224))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not accept an input"):
        count_flops(model, (3, 64, 64))


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_b0"])
def test_densify_merges_factors_back(arch: str) -> None:
    from trp_zoo import densify

    model = timm.create_model(arch, num_classes=5).eval()
    dec = decompose(model, "spatial", rank=0.5)
    dense = densify(dec)
    assert rank_plan(dense) == {}
    assert [type(m) for m in dense.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = dec(x)
        assert (dense(x) - expected).abs().max() / expected.abs().max() < 1e-4


@pytest.mark.parametrize("bad", [0, -1])
def test_rank_callable_below_one_is_an_error(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"returned {bad}; a rank is at least 1"):
        decompose(small_net(), "channel", rank=lambda s: bad)


def test_decompose_names_a_misplaced_rank_and_a_model_that_is_not_built() -> None:
    with pytest.raises(TypeError, match=r"second argument is the scheme .* rank=0\.9\)"):
        decompose(small_net(), 0.9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes a torch nn\.Module, got str: build the model"):
        decompose("resnet18", rank=0.9)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"rank": 4, "exclude": "*"}, "it has no candidate layer"),
        ({"rank": 32}, "every one of its 2 candidate layers would need a rank that does not"),
    ],
)
def test_decompose_that_factorizes_nothing_warns(kwargs: dict, why: str) -> None:
    with pytest.warns(UserWarning, match=rf"decompose factorized no layer of the model: {why}"):
        out = decompose(small_net(), "channel", **kwargs)
    assert rank_plan(out) == {}
