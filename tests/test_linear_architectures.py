"""Factorized Linears end to end on tiny timm transformers, MLPs and hybrids.

For each family: decompose (every Linear but the classifier is a candidate), forward
equal to the rank-r projected dense model, MACs as the per-layer cost formulas predict
and as ``torch.utils.flop_counter`` counts, and the checkpoint round trip through
``trp_zoo.load`` and ``timm.create_model("local-dir:...")`` with equal outputs.
"""

import copy
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import trp_zoo
from tests.tiny_timm import ARCHITECTURES
from trp_zoo import FactorizedConv2d, FactorizedLinear, count_flops, decompose, rank_plan
from trp_zoo.algorithms.decompose import project_weights
from trp_zoo.algorithms.layers import classifier_names, select_targets
from trp_zoo.lowrank.linears import route_through_layer


def predicted_macs(dense: nn.Module, plan: dict[str, int], input_size: tuple) -> int:
    """Dense MACs minus what each planned layer saves, from hooks on the dense model."""
    saved = 0

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            nonlocal saved
            r = plan[name]
            if isinstance(module, nn.Linear):
                n, c = module.out_features, module.in_features
                tokens = args[0].numel() // c
                saved += tokens * (n * c - r * (n + c))
            else:
                n, c = module.out_channels, module.in_channels
                kh, kw = module.kernel_size
                pixels = out.numel() // n
                saved += pixels * (n * c * kh * kw - r * (c * kh * kw + n))

        return fn

    dense = copy.deepcopy(dense)
    for n in plan:  # as decompose does: EVA's qkv is called, not read by F.linear
        route_through_layer(dense, n)
    layers = dict(dense.named_modules())
    handles = [layers[n].register_forward_hook(hook(n)) for n in plan]
    try:
        total = count_flops(dense, input_size)
    finally:
        for h in handles:
            h.remove()
    return total - saved


def flop_counter_macs(model: nn.Module, input_size: tuple) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("family", list(ARCHITECTURES))
def test_decompose_count_save_and_load_round_trip(family: str, tmp_path: Path) -> None:
    name, kwargs, input_size = ARCHITECTURES[family]
    dense = timm.create_model(name, num_classes=5, **kwargs).eval()
    heads = classifier_names(dense)
    with torch.no_grad():  # some families zero-init their head, which would hide any error
        for head in heads:
            nn.init.normal_(dense.get_submodule(head).weight)
    low = decompose(dense, rank=0.6).eval()
    plan = rank_plan(low)
    linears = [n for n in plan if isinstance(low.get_submodule(n), FactorizedLinear)]
    assert len(linears) >= 4, plan
    assert heads and not heads & set(plan)
    for head in heads:  # the classifier stays a dense Linear
        assert type(low.get_submodule(head)) in (nn.Linear, timm.layers.Linear)
    assert set(plan) <= set(select_targets(dense))
    for n in plan:
        assert isinstance(low.get_submodule(n), (FactorizedLinear, FactorizedConv2d))

    x = torch.randn(2, *input_size)
    with torch.no_grad():
        out = low(x)
        expected = project_weights(dense, "channel", plan).eval()(x)
    assert out.shape == (2, 5)
    assert float((out - expected).norm() / expected.norm()) < 1e-4

    macs = count_flops(low, input_size)
    assert macs < count_flops(dense, input_size)
    assert abs(macs - predicted_macs(dense, plan, input_size)) <= 0.005 * macs
    assert abs(macs - flop_counter_macs(low, input_size)) <= 0.05 * macs

    path = trp_zoo.save_pretrained(
        low,
        tmp_path / family,
        model_args=kwargs,
        base_architecture=name,  # the tiny variants carry their source model's pretrained_cfg
        pretrained_cfg={"input_size": input_size},
        metrics={"macs": macs},
    )
    for loaded in (
        trp_zoo.load(str(path)),
        timm.create_model(f"local-dir:{path}", pretrained=True),
    ):
        assert rank_plan(loaded) == plan
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x), out, atol=1e-5, rtol=1e-5)
    card = (path / "README.md").read_text()
    assert f"{len(linears)} linear layers factorized" in card
