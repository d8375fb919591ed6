"""Factorized ``nn.Linear``: the layer, selection, decompose, densify and the TRP hook."""

import logging
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from trp_zoo import TRP, FactorizedLinear, count_flops, decompose, densify, rank_plan
from trp_zoo.algorithms.decompose import factorize_architecture, project_weights
from trp_zoo.algorithms.layers import select_targets
from trp_zoo.lowrank.svd import exact_svd

LAMBDA = 1e-2


def rank_r(weight: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = exact_svd(weight)
    return ((u[:, :r] * s[:r]) @ vh[:r]).to(weight.dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


class TokenNet(nn.Module):
    """An MLP on tokens ``(B, T, C)`` ending in a classifier on the mean token."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(24, 48)
        self.fc2 = nn.Linear(48, 24, bias=False)
        self.head = nn.Linear(24, 5)  # the last layer: the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(F.gelu(self.fc1(x))).mean(1))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 40), (3, 9, 40), (2, 5, 6, 40)], ids=["2d", "3d", "4d"])
def test_factorized_linear_equals_rank_r_projected_linear(shape: tuple, bias: bool) -> None:
    dense = nn.Linear(40, 56, bias=bias)
    r = 9
    low = decompose(nn.Sequential(nn.Identity(), dense, nn.Linear(56, 2)), rank={"1": r})[1]
    assert isinstance(low, FactorizedLinear) and low.rank == r
    assert (low.in_features, low.out_features) == (40, 56)
    assert low.first.weight.shape == (r, 40) and low.second.weight.shape == (56, r)
    x = torch.randn(*shape)
    expected = F.linear(x, rank_r(dense.weight.detach(), r), dense.bias)
    out = low(x)
    assert out.shape == (*shape[:-1], 56)
    assert rel_err(out, expected) < 1e-4
    assert rel_err(low.weight, rank_r(dense.weight.detach(), r)) < 1e-5
    assert (low.bias is None) == (not bias)
    # sqrt(S) in both factors: A A^T and B^T B are both diag(S_r)
    s = exact_svd(dense.weight.detach())[1][:r].float()
    torch.testing.assert_close(
        low.first.weight @ low.first.weight.T, torch.diag(s), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        low.second.weight.T @ low.second.weight, torch.diag(s), atol=1e-4, rtol=1e-4
    )
    assert f"rank={r}" in repr(low)


def test_weight_is_computed_on_access_and_differentiable() -> None:
    low = FactorizedLinear(6, 4, rank=2)
    low.weight.sum().backward()
    assert low.first.weight.grad is not None and low.second.weight.grad is not None
    assert "weight" not in dict(low.named_parameters())


def test_linears_are_candidates_except_the_classifier_and_selectable_by_kind() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 32), nn.Linear(32, 4)
    )
    assert set(select_targets(net)) == {"1", "3"}  # stem "0" and classifier "4" stay dense
    assert set(select_targets(net, layers="conv")) == {"1"}
    assert set(select_targets(net, layers="linear")) == {"3"}
    with pytest.raises(ValueError, match="layers must be one of conv, linear, all"):
        select_targets(net, layers="attention")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="include pattern '1' matches no linear layer"):
        select_targets(net, include="1", layers="linear")


def test_timm_classifier_stays_dense_and_blocks_are_candidates() -> None:
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=3
    )
    targets = select_targets(model)
    assert set(targets) == {
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    }
    low = decompose(model, rank=0.5)
    assert isinstance(low.head, nn.Linear) and set(rank_plan(low)) == set(targets)


def test_rank_must_lower_cost_for_a_linear() -> None:
    # N*C/(N+C) = 40*56/96 = 23.33: rank 23 lowers the cost, rank 24 does not
    net = nn.Sequential(nn.Linear(40, 56), nn.Linear(56, 2))
    assert rank_plan(decompose(net, rank={"0": 23})) == {"0": 23}
    with (
        pytest.warns(UserWarning, match="rank 24 does not lower its cost"),
        pytest.warns(UserWarning, match="decompose factorized no layer of the model"),
    ):
        assert rank_plan(decompose(net, rank={"0": 24})) == {}


def test_a_plan_of_many_layers_that_stay_dense_is_one_warning() -> None:
    """A TRP plan names every candidate, many of them at ranks that do not pay off: one
    warning that counts them, not one per layer."""
    net = nn.Sequential(*[nn.Linear(40, 40) for _ in range(6)])
    plan = {str(i): 10 if i < 2 else 30 for i in range(6)}  # 40*40/80 = 20: 30 is too high
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = decompose(net, rank=plan)
    assert rank_plan(low) == {"0": 10, "1": 10}
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert text.startswith("decompose kept 4 planned layer(s) dense: 2: rank 30")
    assert "(4 in all)" in text and "at most 19 does" in text


def test_decompose_that_factorizes_nothing_warns() -> None:
    net = nn.Sequential(nn.Linear(40, 56), nn.Linear(56, 2))
    with pytest.warns(UserWarning, match="decompose factorized no layer.*lower the rank"):
        decompose(net, rank=30)
    with pytest.warns(UserWarning, match=r"no candidate layer \(nn.Conv2d"):
        decompose(net, rank=3, layers="conv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decompose(net, rank=3)


def test_trp_without_eligible_layer_names_the_types_it_looked_for() -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    with pytest.raises(
        ValueError, match=r"looked for nn.Conv2d with groups=1 .*stem and classifier"
    ):
        TRP(model, layers="conv")
    assert len(TRP(model).targets) == 4


def test_densify_merges_factorized_linears_back() -> None:
    net = TokenNet().eval()
    low = decompose(net, rank=5)
    dense = densify(low)
    assert type(dense.fc1) is nn.Linear and rank_plan(dense) == {}
    x = torch.randn(2, 3, 24)
    torch.testing.assert_close(dense(x), low(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        low(x), project_weights(net, "channel", {"fc1": 5, "fc2": 5})(x), atol=1e-5, rtol=1e-5
    )


def test_linear_under_the_spatial_scheme_uses_its_matrix() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(1),
        nn.Linear(8 * 4 * 4, 64),
        nn.Linear(64, 2),
    )
    low = decompose(net, "spatial", rank=4)
    assert set(rank_plan(low)) == {"1", "3"} and isinstance(low[3], FactorizedLinear)
    rebuilt = factorize_architecture(TokenNet(), "spatial", {"fc1": 3})
    assert isinstance(rebuilt.fc1, FactorizedLinear) and rebuilt.fc1.rank == 3


def test_parent_reading_the_weight_keeps_the_linear_dense_with_a_reason(caplog) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(32, 2, batch_first=True)
            self.fc = nn.Linear(32, 32)
            self.head = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fc(self.mha(x, x, x)[0]).mean(1))

    with caplog.at_level(logging.INFO, logger="trp_zoo"):
        targets = select_targets(Model())
    assert set(targets) == {"fc"}  # nn.MultiheadAttention calls F.linear on out_proj.weight
    assert (
        "mha.out_proj: kept dense, MultiheadAttention.forward (mha) reads its weight directly"
        in caplog.text
    )
    with pytest.raises(ValueError, match=r"'mha\.out_proj', which cannot be factorized"):
        decompose(Model(), rank={"mha.out_proj": 4})


def test_eva_fused_qkv_with_separate_biases_is_factorized_through_the_layer() -> None:
    model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1).eval()
    assert model.blocks[0].attn.q_bias is not None  # the F.linear(x, qkv.weight, bias) path
    plan = {"blocks.0.attn.qkv": 8, "blocks.0.mlp.fc2": 8}
    low = decompose(model, rank=plan).eval()
    assert (
        isinstance(low.blocks[0].attn.qkv, FactorizedLinear)
        and low.blocks[0].attn.qkv_bias_separate
    )
    x = torch.randn(2, 3, 28, 28)
    expected = project_weights(model, "channel", plan)(x)
    assert rel_err(low(x), expected) < 1e-4
    rebuilt = factorize_architecture(
        timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1), "channel", plan
    )
    rebuilt.load_state_dict(low.state_dict())
    assert rel_err(rebuilt.eval()(x), expected) < 1e-4


def matrix_rank(hook: TRP, name: str) -> int:
    return int(torch.linalg.matrix_rank(hook.targets[name].weight.detach().double(), rtol=1e-5))


def test_trp_projects_linears_and_adds_the_subgradient_only_on_period_steps() -> None:
    model = TokenNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hook = TRP(model, energy=0.7, period=3, nuclear_weight=LAMBDA).attach(opt)
    assert set(hook.targets) == {"fc1", "fc2"}
    fc1 = hook.targets["fc1"]
    g = torch.Generator().manual_seed(0)
    seen_period = 0
    for _ in range(9):
        opt.zero_grad()
        x, y = torch.randn(4, 6, 24, generator=g), torch.randint(0, 5, (4,), generator=g)
        F.cross_entropy(model(x), y).backward()
        raw = fc1.weight.grad.clone()
        if hook.is_period_step(hook.step):
            seen_period += 1
            r = hook.ranks["fc1"]
            assert (
                r < 24 and matrix_rank(hook, "fc1") == r
            )  # this step's forward saw the projection
            u, _, vh = exact_svd(fc1.weight.detach())
            expected = LAMBDA * (u[:, :r] @ vh[:r]).float()
        else:
            expected = torch.zeros_like(raw)
        opt.step()
        torch.testing.assert_close(fc1.weight.grad - raw, expected, atol=1e-6, rtol=1e-4)
    assert seen_period == 3
    plan = hook.project(hook.ranks)
    for name in ("fc1", "fc2"):
        assert matrix_rank(hook, name) == plan[name]
    macs = hook.macs_per_pixel()
    assert macs["fc1"] == (48 * 24, plan["fc1"] * (24 + 48))


def test_count_flops_when_a_parameter_is_passed_as_a_module_input() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, token = pair
            return self.fc(x.flatten(1)[:, :8] + token)

    class Model(nn.Module):  # as timm's PiT hands a view of its cls token to a module
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 8))
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair((x, self.token.expand(x.shape[0], -1)))

    model = Model()
    assert count_flops(model, (1, 4, 4)) == 8 * 8
    assert all(p.requires_grad for p in model.parameters())


def test_count_flops_counts_fused_cpu_attention() -> None:
    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.reshape(1, 2, 8, 2)  # 2 heads, 8 tokens of 2 features
            return F.scaled_dot_product_attention(q, q, q).sum()[None, None]

    # 2 heads x (QK^T: 8 x 8 x 2 + AV: 8 x 8 x 2) multiply-adds, as timm's fused ViT runs it
    assert count_flops(Attention(), (1, 8, 4)) == 2 * (8 * 8 * 2 + 8 * 8 * 2)
