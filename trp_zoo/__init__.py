"""trp-zoo: Trained Rank Pruning for timm CNNs, a low-rank model zoo, and fast engines."""

from . import models  # noqa: F401  (registers CIFAR ResNets with timm)
from .criteria import (
    EnergyThreshold,
    FixedRank,
    FunctionCriterion,
    MinRank,
    RankCriterion,
    RankRatio,
    ValueThreshold,
    as_criterion,
)
from .decompose import decompose, densify, factorize_architecture, factorized_scheme, rank_plan
from .factorized import FactorizedConv2d
from .flops import CostComparison, compare_cost, count_flops, count_params
from .schemes import SCHEMES, get_scheme
from .trp import TRP

__version__ = "0.1.0"

__all__ = [
    "SCHEMES",
    "TRP",
    "CostComparison",
    "EnergyThreshold",
    "FactorizedConv2d",
    "FixedRank",
    "FunctionCriterion",
    "MinRank",
    "RankCriterion",
    "RankRatio",
    "ValueThreshold",
    "__version__",
    "as_criterion",
    "compare_cost",
    "count_flops",
    "count_params",
    "decompose",
    "densify",
    "factorize_architecture",
    "factorized_scheme",
    "get_scheme",
    "rank_plan",
]
