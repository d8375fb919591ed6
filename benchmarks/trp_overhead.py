"""TRP overhead: training-step time with the TRP hook attached vs plain training.

Setting: a Fashion-MNIST recipe's model (``--recipe``: resnet18 by default, or the ViT
whose Linears TRP trains) with one input channel, 28x28 inputs, batch 128, the recipe's
optimizer (resnet18: SGD lr 0.1, momentum 0.9, wd 1e-4; vit: AdamW lr 1e-3, wd 0.05),
Fashion-MNIST batches (random data where the data set is absent), TRP channel scheme at
the recipes' default 98% energy (``--energy``), period 20, nuclear weight 3e-4.

Two identical models train side by side: blocks of ``period`` plain steps and
``period`` TRP steps alternate, so machine noise hits both alike and every TRP block
holds exactly one projection. The result is the ratio of mean step times, written to
``benchmarks/results/trp_overhead.json``. The cost of one projection with each SVD
method (exact SVD, Gram eigendecomposition, tracked subspace) on the final weights is
measured in the same run.

    python benchmarks/trp_overhead.py            # about 10 minutes on 2 CPU cores
    python benchmarks/trp_overhead.py --recipe vit --output benchmarks/results/trp_overhead_vit.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from fmnist_runs import FMNIST_RECIPES, FmnistRecipe

from trp_zoo import TRP
from trp_zoo.data import load_fashion_mnist
from trp_zoo.data.fashion_mnist import MEAN, STD
from trp_zoo.environment import software_versions
from trp_zoo.fileio import write_json
from trp_zoo.lowrank.svd import METHODS, Method

RESULTS = Path(__file__).parent / "results" / "trp_overhead.json"


def batches(batch_size: int, seed: int):
    try:
        images, labels = load_fashion_mnist("train")
        source = "fashion-mnist"
    except FileNotFoundError:
        images = torch.randint(0, 256, (10_000, 1, 28, 28), dtype=torch.uint8)
        labels = torch.randint(0, 10, (10_000,))
        source = "random"
    gen = torch.Generator().manual_seed(seed)

    def iterate():
        while True:
            order = torch.randperm(len(labels), generator=gen)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                idx = order[i : i + batch_size]
                yield (images[idx].float() / 255 - MEAN) / STD, labels[idx]

    return iterate(), source


def optimizer(recipe: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer at its settings."""
    if recipe == "vit":
        return timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def timed_steps(model, opt, data, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def projection_cost(
    model: torch.nn.Module, method: Method, energy: float, repeats: int = 3
) -> float:
    """Seconds for one projection of every target layer (after a warm-up call)."""
    model = copy.deepcopy(model)
    hook = TRP(model, "channel", energy=energy, period=20, method=method)
    hook.project()
    start = time.perf_counter()
    for _ in range(repeats):
        with torch.no_grad():  # a small perturbation, as SGD would make between projections
            for conv in hook.targets.values():
                conv.weight.add_(torch.randn_like(conv.weight), alpha=1e-4)
        hook.project()
    return (time.perf_counter() - start) / repeats


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--blocks", type=int, default=40, help="timed blocks of `period` steps per model"
    )
    parser.add_argument(
        "--warmup-blocks", type=int, default=20, help="untimed blocks before timing"
    )
    parser.add_argument("--period", type=int, default=20)
    parser.add_argument(
        "--energy", type=float, default=0.98, help="energy kept (recipe default 0.98)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--method", default="subspace", choices=METHODS)
    parser.add_argument("--recipe", choices=("resnet18", "vit"), default="resnet18")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    recipe = FmnistRecipe(FMNIST_RECIPES[args.recipe])
    plain = recipe.create_model()
    trained = copy.deepcopy(plain)
    opt_plain, opt_trp = optimizer(args.recipe, plain), optimizer(args.recipe, trained)
    hook = TRP(
        trained,
        "channel",
        energy=args.energy,
        period=args.period,
        nuclear_weight=3e-4,
        method=args.method,
    )
    hook.attach(opt_trp)
    data_plain, source = batches(args.batch_size, seed=1)
    data_trp, _ = batches(args.batch_size, seed=1)
    plain.train()
    trained.train()

    for _ in range(args.warmup_blocks):
        timed_steps(plain, opt_plain, data_plain, args.period)
        timed_steps(trained, opt_trp, data_trp, args.period)
    proj_before = hook.projection_seconds
    full_before = hook.full_decompositions
    t_plain: list[float] = []
    t_trp: list[float] = []
    for block in range(args.blocks):
        order = [(plain, opt_plain, data_plain, t_plain), (trained, opt_trp, data_trp, t_trp)]
        for model, opt, data, sink in order if block % 2 == 0 else order[::-1]:
            sink.append(timed_steps(model, opt, data, args.period) / args.period)
    step_plain = statistics.mean(t_plain)
    step_trp = statistics.mean(t_trp)
    projections = args.blocks
    projection_share = (hook.projection_seconds - proj_before) / (sum(t_trp) * args.period)

    result = {
        "setting": {
            "model": f"{recipe.defaults.model}, in_chans=1, num_classes=10, "
            f"{recipe.defaults.model_kwargs} ({recipe.script})",
            "optimizer": type(opt_plain).__name__,
            "input": [1, 28, 28],
            "batch_size": args.batch_size,
            "data": source,
            "scheme": "channel",
            "energy": args.energy,
            "period": args.period,
            "nuclear_weight": 3e-4,
            "method": args.method,
            "warmup_steps": args.warmup_blocks * args.period,
            "timed_steps_per_model": args.blocks * args.period,
            "threads": torch.get_num_threads(),
        },
        "plain_step_s": round(step_plain, 5),
        "trp_step_s": round(step_trp, 5),
        "overhead_ratio": round(step_trp / step_plain, 4),
        "overhead_pct": round(100 * (step_trp / step_plain - 1), 2),
        "median_block_ratio": round(
            statistics.median(a / b for a, b in zip(t_trp, t_plain, strict=True)), 4
        ),
        "projection_share_of_trp_time": round(projection_share, 4),
        "projection_s_mean": round((hook.projection_seconds - proj_before) / projections, 4),
        "full_decompositions_while_timed": hook.full_decompositions - full_before,
        "ranks_at_end": hook.ranks,
        "projection_s_by_method_on_final_weights": {
            m: round(projection_cost(trained, m, args.energy), 4) for m in METHODS
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "software": software_versions(),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(args.output, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("ranks_at_end", "machine")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
