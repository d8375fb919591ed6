import copy

import pytest
import timm
import torch

import trp_zoo
from trp_zoo.algorithms.layers import select_targets
from trp_zoo.algorithms.rank_alignment import aligned_rank_plan, pad_ranks

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet18():
    return timm.create_model("resnet18", num_classes=10).eval()


@pytest.mark.parametrize(("scheme", "target"), [("channel", 2.2), ("spatial", 2.2)])
def test_aligned_plan_reaches_the_target_with_multiples_of_16(resnet18, scheme, target):
    plan = aligned_rank_plan(resnet18, scheme, target, SIZE, multiple=16)
    assert plan and all(rank % 16 == 0 for rank in plan.values())
    # the plan is structural: building the architecture (no SVD) is enough to count MACs
    factorized = trp_zoo.factorize_architecture(copy.deepcopy(resnet18), scheme, plan)
    reduction = trp_zoo.compare_cost(resnet18, factorized, SIZE).macs_reduction
    assert target <= reduction < target * 1.1  # as close above the target as the steps allow
    if scheme == "spatial":
        assert all("downsample" not in name for name in plan)  # 1x1 convs: no spatial split


def test_unreachable_target_says_how_far_it_can_go(resnet18):
    with pytest.raises(ValueError, match=r"cannot cut this model's MACs 50.0x .* at most"):
        aligned_rank_plan(resnet18, "channel", 50.0, SIZE)


def _factorized_resnet18(rank):
    """resnet18 with every target conv factorized at ``rank`` (random factors, no SVD)."""
    model = timm.create_model("resnet18", num_classes=10)
    plan = {name: rank for name in select_targets(model)}
    return trp_zoo.factorize_architecture(model, "channel", plan).eval()


def test_pad_ranks_keeps_the_function_and_rounds_up():
    model = _factorized_resnet18(23)
    padded = pad_ranks(model, 16)
    before, after = trp_zoo.rank_plan(model), trp_zoo.rank_plan(padded)
    assert before.keys() == after.keys() and set(before.values()) == {23}
    assert all(rank == 32 for rank in after.values())
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), model(x), rtol=0, atol=1e-6)
    assert trp_zoo.rank_plan(model) == before  # the input is untouched


def test_pad_ranks_leaves_layers_where_padding_would_not_pay():
    padded = pad_ranks(_factorized_resnet18(50), 16)
    # layer1 convs (64 -> 64, 3x3): rank 64 would cost more than the dense conv
    assert trp_zoo.rank_plan(padded)["layer1.0.conv1"] == 50
    assert trp_zoo.rank_plan(padded)["layer4.0.conv1"] == 64
