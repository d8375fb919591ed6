import copy

import pytest
import timm

import trp_zoo
from runtime.rank_plans import aligned_rank_plan

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
