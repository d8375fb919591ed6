import pytest
import torch

from trp_zoo import EnergyThreshold, FixedRank, FunctionCriterion
from trp_zoo.lowrank.svd import SubspaceProjector, exact_svd, gram_svd, svd


def decaying(n: int, k: int, decay: float = 0.9) -> torch.Tensor:
    u = torch.linalg.qr(torch.randn(n, n))[0]
    v = torch.linalg.qr(torch.randn(k, n))[0]
    s = decay ** torch.arange(n, dtype=torch.float32)
    return (u * s) @ v.T


def truncation(a: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = exact_svd(a)
    return ((u[:, :r] * s[:r]) @ vh[:r]).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", [(48, 300), (300, 48)])
def test_gram_svd_matches_exact(shape: tuple[int, int]) -> None:
    a = decaying(min(shape), max(shape)) if shape[0] <= shape[1] else decaying(shape[1], shape[0]).T
    u, s, vh = gram_svd(a)
    _, se, _ = exact_svd(a)
    keep = se > se[0] * 1e-5
    torch.testing.assert_close(s[keep], se[keep], rtol=1e-6, atol=0)
    assert rel(((u[:, :10] * s[:10]) @ vh[:10]).float(), truncation(a, 10)) < 1e-6


def test_svd_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown SVD method"):
        svd(torch.eye(3), "qr")  # type: ignore[arg-type]


# the bounds lowrank's docstring states; rank 56 of 64 projects through the discarded
# directions, and the float32 Gram's small eigenvectors limit it (the kept-directions
# formulas measured the same: at most 2.5e-6 over eight seeds)
@pytest.mark.parametrize(("rank", "bound"), [(12, 1.5e-6), (56, 3e-6)])
@pytest.mark.parametrize("tall", [False, True])
@pytest.mark.parametrize("method", ["exact", "gram", "subspace"])
def test_projection_is_truncation_and_direction_is_uv(
    method: str, tall: bool, rank: int, bound: float
) -> None:
    a = decaying(64, 200, 0.95).T if tall else decaying(64, 200, 0.95)
    proj = SubspaceProjector(method)(a, FixedRank(rank))
    assert proj.rank == rank and proj.full
    assert rel(proj.projected, truncation(a, rank)) < bound
    u, _, vh = exact_svd(a)
    assert rel(proj.nuclear_direction, (u[:, :rank] @ vh[:rank]).float()) < 1e-4
    assert torch.linalg.matrix_rank(proj.projected.double(), rtol=1e-6) == rank


def test_tracked_projection_stays_close_to_exact() -> None:
    torch.manual_seed(1)
    a = decaying(128, 600, decay=0.8)
    proj = SubspaceProjector("subspace")
    criterion = EnergyThreshold(0.9)
    first = proj(a, criterion)
    assert first.full
    a = first.projected
    tracked = 0
    for _ in range(30):  # as lowrank's docstring measures: 30 projections, 1e-3 apart
        a = a + 1e-3 * torch.randn_like(a)
        result = proj(a, criterion)
        tracked += not result.full
        assert result.rank == criterion(torch.linalg.svdvals(a.double()).float())
        assert rel(result.projected, truncation(a, result.rank)) < 5e-5
        a = result.projected
    assert tracked >= 28  # the cheap path does the work once the subspace is known


def test_tracked_falls_back_when_rank_grows_or_spectrum_is_needed() -> None:
    a = decaying(128, 600, decay=0.8)
    proj = SubspaceProjector("subspace")
    proj(a, FixedRank(4))
    assert proj.basis is not None and proj.basis.shape[1] == 12
    assert proj(a, FixedRank(30)).full  # 30 > tracked subspace
    proj(a, FixedRank(4))
    assert proj(a, FunctionCriterion(lambda s: 4)).full  # needs the whole spectrum
    proj(a, FixedRank(4))
    assert not proj(a, FixedRank(4)).full


def test_tracked_up_to_half_of_the_rows() -> None:
    a = decaying(128, 600, decay=0.95)
    proj = SubspaceProjector("subspace")
    proj(a, FixedRank(30))
    assert proj.basis is not None and proj.basis.shape[1] == 38  # 30 + max(8, 30 // 4)
    tracked = proj(a, FixedRank(30))  # 38 of 128 rows: past a quarter, within half
    assert not tracked.full
    assert rel(tracked.projected, truncation(a, 30)) < 5e-5
    proj(a, FixedRank(52))  # 52 + 13 = 65 columns: past half of the rows
    assert proj(a, FixedRank(52)).full
