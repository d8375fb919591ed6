import pytest
import torch

from trp_zoo import (
    EnergyThreshold,
    FixedRank,
    FunctionCriterion,
    RankRatio,
    ValueThreshold,
    as_criterion,
)

S = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5])  # energies 16, 4, 1, 1, 0.25 (total 22.25)


def test_energy_threshold() -> None:
    assert EnergyThreshold(0.7)(S) == 1  # 16/22.25 = 0.719
    assert EnergyThreshold(0.9)(S) == 3  # 20/22.25 = 0.899 < 0.9
    assert EnergyThreshold(0.95)(S) == 4  # 21/22.25 = 0.944 < 0.95
    assert EnergyThreshold(1.0)(S) == 5


def test_energy_threshold_exact_boundaries() -> None:
    s = torch.tensor([3.0, 1.0])  # energies 9, 1
    assert EnergyThreshold(0.9)(s) == 1
    assert EnergyThreshold(0.91)(s) == 2


def test_value_threshold() -> None:
    assert ValueThreshold(1.0)(S) == 4
    assert ValueThreshold(1.5)(S) == 2
    assert ValueThreshold(100.0)(S) == 1  # at least one value is kept


def test_fixed_rank_and_ratio() -> None:
    assert FixedRank(3)(S) == 3
    assert FixedRank(10)(S) == 5  # capped at the full rank
    assert RankRatio(0.3)(S) == 2  # ceil(1.5)
    assert RankRatio(0.4)(S) == 2
    assert RankRatio(1.0)(S) == 5


def test_composition_takes_the_smaller_rank() -> None:
    both = EnergyThreshold(0.99) & FixedRank(2)
    assert both(S) == 2
    assert (EnergyThreshold(0.7) & FixedRank(4))(S) == 1


def test_callable_and_as_criterion() -> None:
    assert FunctionCriterion(lambda s: int((s > 0.9).sum()))(S) == 4
    assert isinstance(as_criterion(3), FixedRank)
    assert isinstance(as_criterion(0.9), EnergyThreshold)
    assert as_criterion(lambda s: 2)(S) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, 0.0, 1.0, True, "3"])
def test_invalid_rank_values(bad: object) -> None:
    with pytest.raises(ValueError):
        as_criterion(bad)  # type: ignore[arg-type]


def test_callable_returning_non_int_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        FunctionCriterion(lambda s: 2.5)(S)


def test_partial_spectrum_decides_only_when_it_can() -> None:
    total = float((S**2).sum())
    top = S[:3]
    assert EnergyThreshold(0.7).select_partial(top, total, 5) == 1
    assert EnergyThreshold(0.99).select_partial(top, total, 5) is None  # needs more values
    assert FixedRank(2).select_partial(top, total, 5) == 2
    assert FixedRank(4).select_partial(top, total, 5) is None
    assert ValueThreshold(1.5).select_partial(top, total, 5) == 2
    assert ValueThreshold(0.1).select_partial(top, total, 5) is None
    assert FunctionCriterion(lambda s: 1).select_partial(top, total, 5) is None
