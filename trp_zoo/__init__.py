"""trp-zoo: Trained Rank Pruning for timm backbones, a low-rank model zoo, and fast engines."""

from . import models  # noqa: F401  (registers CIFAR ResNets with timm)
from .algorithms.decompose import (
    decompose,
    densify,
    factorize_architecture,
    factorized_scheme,
    rank_plan,
)
from .algorithms.trp import TRP
from .errors import (
    CheckpointError,
    NotCachedError,
    PublishError,
    UnknownModelError,
    WeightsNotPublishedError,
    ZooError,
)
from .lowrank.criteria import (
    EnergyThreshold,
    FixedRank,
    FunctionCriterion,
    MinRank,
    RankCriterion,
    RankRatio,
    ValueThreshold,
    as_criterion,
)
from .lowrank.factorized import FactorizedConv2d, FactorizedLinear
from .lowrank.macs import CostComparison, compare_cost, count_flops, count_params
from .lowrank.schemes import SCHEMES, get_scheme
from .zoo import timm_entrypoint  # noqa: F401  (registers the trp_factorized entrypoint)
from .zoo.hub import load, model_info
from .zoo.publish import Published, publish, push_to_hub
from .zoo.registry import ZooEntry, get_entry, list_models
from .zoo.saving import record_speedups, save_pretrained
from .zoo.store import register_local

__version__ = "0.1.0"

__all__ = [
    "SCHEMES",
    "TRP",
    "CheckpointError",
    "CostComparison",
    "EnergyThreshold",
    "FactorizedConv2d",
    "FactorizedLinear",
    "FixedRank",
    "FunctionCriterion",
    "MinRank",
    "NotCachedError",
    "PublishError",
    "Published",
    "RankCriterion",
    "RankRatio",
    "UnknownModelError",
    "ValueThreshold",
    "WeightsNotPublishedError",
    "ZooEntry",
    "ZooError",
    "__version__",
    "as_criterion",
    "compare_cost",
    "count_flops",
    "count_params",
    "decompose",
    "densify",
    "factorize_architecture",
    "factorized_scheme",
    "get_entry",
    "get_scheme",
    "list_models",
    "load",
    "model_info",
    "publish",
    "push_to_hub",
    "rank_plan",
    "record_speedups",
    "register_local",
    "save_pretrained",
]
