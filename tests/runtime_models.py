"""Small models shared by the runtime tests."""

from __future__ import annotations

from timm.models.resnet import BasicBlock, ResNet
from torch import nn

import trp_zoo
from runtime.cost_cache import CostCache, LayerCosts
from runtime.costs import layer_probes, structure_key
from runtime.probes import candidate_ranks
from runtime.target import Target

INPUT_SIZE = (1, 28, 28)


def tiny_resnet() -> nn.Module:
    """A narrow one-block-per-stage timm ResNet for 28x28 grey images, with its data config."""
    model = ResNet(
        BasicBlock,
        (1, 1, 1, 1),
        num_classes=10,
        in_chans=1,
        stem_width=16,
        channels=(16, 32, 32, 64),
    )
    model.pretrained_cfg = {
        "input_size": INPUT_SIZE,
        "mean": (0.2860,),
        "std": (0.3530,),
        "first_conv": "conv1",
        "classifier": "fc",
    }
    return model.eval()


def tiny_factorized(scheme: str = "channel", rank: int = 8) -> nn.Module:
    return trp_zoo.decompose(tiny_resnet(), scheme, rank=rank).eval()


def seed_cost_cache(
    model: nn.Module,
    target: Target,
    scheme: str = "channel",
    *,
    cache: CostCache | None = None,
    rank_step: int = 8,
) -> dict[str, LayerCosts]:
    """Write synthetic costs for ``model`` on ``target`` into the cost cache, so planning
    reads them instead of timing anything: a conv takes 1 µs per thousand MACs of the batch
    plus 10 µs per ONNX node, and the whole model the sum of its convs plus 10%.

    Returns the costs written, by layer name (layers without candidate ranks included).
    """
    cache = cache or CostCache()
    _, target_key = target.resolve()

    def ms(macs: int, nodes: int) -> float:
        return target.batch_size * macs * 1e-6 + 0.01 * nodes

    written = {}
    for name, probe in layer_probes(model, scheme, target.input_size).items():
        ranks = candidate_ranks(probe.scheme, probe.geom, rank_step)
        costs = LayerCosts(
            dense_ms=ms(probe.macs(None), 1),
            rank_ms={r: ms(probe.macs(r), 2) for r in ranks},
            runs=1000,
            warmup=0,
        )
        cache.put_layer(target_key, probe, costs)
        written[name] = costs
    total = 1.1 * sum(c.dense_ms for c in written.values())
    key = structure_key(model, target.input_size)
    cache.put_model(target_key, key, {"p50_ms": total, "runs": 1000, "warmup": 0})
    return written
