r"""TRP overhead: training-step time with the TRP hook attached vs plain training.

Setting: a Fashion-MNIST recipe's model (``--recipe``: resnet18 by default, or the ViT
whose Linears TRP trains) with one input channel, 28x28 inputs, Fashion-MNIST batches
(random data where the data set is absent), trained as the recipe trains it for a whole
run of ``--epochs`` (default 4; the README demo trains 5): its optimizer and learning-rate
schedule (built by the trainer's own ``recipe_optimizer`` and ``recipe_scheduler``),
loss, batch size, TRP scheme, energy, period and nuclear weight (``DEFAULTS`` of the
recipe script; the flags below override some of them).

Two identical models train side by side on the same batches: blocks of ``period`` plain
steps and ``period`` TRP steps alternate, so machine noise hits both alike and every TRP
block holds exactly one projection; the first block of each is not timed. Written to
``benchmarks/results/trp_overhead.json``: the ratio of mean step times and the median
per-block ratio, for the whole run and per epoch, the projections' share of TRP time,
the median overhead of each step position within a block, and the cost of one
projection with each SVD method (exact SVD, Gram eigendecomposition, tracked subspace)
on the final weights.

    python benchmarks/trp_overhead.py            # about 14 minutes on 2 CPU cores
    python benchmarks/trp_overhead.py --recipe vit --output benchmarks/results/trp_overhead_vit.json
    python benchmarks/trp_overhead.py --energy 0.9 \
        --output benchmarks/results/trp_overhead_e090.json
    python benchmarks/trp_overhead.py --control --epochs 1 \
        --output benchmarks/results/trp_overhead_control.json

``--control`` trains both models without TRP: what it reports as overhead is the bias of
the set-up itself (order, memory placement of the copy), to read the TRP numbers against.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from fmnist_runs import FMNIST_RECIPES, FmnistRecipe
from timm.scheduler.scheduler import Scheduler

from trp_zoo import TRP
from trp_zoo.data import load_fashion_mnist
from trp_zoo.data.fashion_mnist import MEAN, STD
from trp_zoo.environment import software_versions
from trp_zoo.fileio import write_json
from trp_zoo.lowrank.svd import METHODS, Method
from trp_zoo.train import TrainConfig
from trp_zoo.train.trainer import recipe_optimizer, recipe_scheduler

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

    return iterate(), source, len(labels)


@dataclasses.dataclass
class Run:
    """One of the two models trained side by side, with its recipe optimizer and schedule."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    data: Iterator[tuple[torch.Tensor, torch.Tensor]]
    label_smoothing: float
    updates: int = 0
    block_seconds: list[float] = dataclasses.field(default_factory=list)
    step_seconds: list[list[float]] = dataclasses.field(default_factory=list)

    def train_block(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` training steps as the recipe takes them (loss, step,
        lr)."""
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            x, y = next(self.data)
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing).backward()
            self.optimizer.step()
            self.updates += 1
            self.scheduler.step_update(num_updates=self.updates)
            seconds.append(time.perf_counter() - start)
        return seconds

    def timed_block(self, steps: int) -> None:
        self.step_seconds.append(self.train_block(steps))
        self.block_seconds.append(sum(self.step_seconds[-1]))


def projection_cost(
    model: torch.nn.Module, method: Method, cfg: TrainConfig, repeats: int = 3
) -> float:
    """Seconds for one projection of every target layer (after a warm-up call)."""
    model = copy.deepcopy(model)
    hook = TRP(model, cfg.scheme, energy=cfg.energy, method=method, layers=cfg.layers)
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
        "--epochs",
        type=int,
        default=4,
        help="length of the run and of its lr schedule (default 4)",
    )
    parser.add_argument("--period", type=int, help="default: the recipe's")
    parser.add_argument("--energy", type=float, help="energy kept (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--method", default="subspace", choices=METHODS)
    parser.add_argument("--recipe", choices=("resnet18", "vit"), default="resnet18")
    parser.add_argument(
        "--control",
        action="store_true",
        help="attach no TRP hook: both models train plainly, and the 'overhead' measured is "
        "the set-up's own bias (the second model is a copy of the first)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def overhead(plain: list[float], trp: list[float]) -> dict[str, float]:
    """Mean-step ratio and median per-block ratio of TRP to plain blocks."""
    ratio = sum(trp) / sum(plain)
    return {
        "overhead_pct": round(100 * (ratio - 1), 2),
        "median_block_overhead_pct": round(
            100 * (statistics.median(a / b for a, b in zip(trp, plain, strict=True)) - 1), 2
        ),
    }


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    recipe = FmnistRecipe(FMNIST_RECIPES[args.recipe])
    overrides = {"epochs": args.epochs, "energy": args.energy, "period": args.period}
    overrides["batch_size"] = args.batch_size
    cfg = dataclasses.replace(
        recipe.defaults, **{key: value for key, value in overrides.items() if value is not None}
    )
    data_plain, source, train_images = batches(cfg.batch_size, seed=1)
    data_trp, _, _ = batches(cfg.batch_size, seed=1)
    steps_per_epoch = train_images // cfg.batch_size
    blocks = cfg.epochs * steps_per_epoch // cfg.period
    runs: list[Run] = []
    for data in (data_plain, data_trp):
        model = recipe.create_model() if not runs else copy.deepcopy(runs[0].model)
        opt = recipe_optimizer(model, cfg)
        sched = recipe_scheduler(opt, cfg, steps_per_epoch)
        runs.append(Run(model.train(), opt, sched, data, cfg.label_smoothing))
    plain, trained = runs
    hook = TRP(
        trained.model,
        cfg.scheme,
        energy=cfg.energy,
        period=cfg.period,
        nuclear_weight=cfg.nuclear_weight,
        method=args.method,
        layers=cfg.layers,
    )
    if not args.control:
        hook.attach(trained.optimizer)

    # block 0 of each model warms allocator and kernel caches and is not timed
    plain.train_block(cfg.period)
    trained.train_block(cfg.period)
    projection_seconds: list[float] = []
    full: list[int] = []
    for block in range(1, blocks):
        before = (hook.projection_seconds, hook.full_decompositions)
        for run in runs if block % 2 == 0 else runs[::-1]:
            run.timed_block(cfg.period)
        projection_seconds.append(hook.projection_seconds - before[0])
        full.append(hook.full_decompositions - before[1])
        if (block + 1) * cfg.period // steps_per_epoch > block * cfg.period // steps_per_epoch:
            so_far = overhead(plain.block_seconds, trained.block_seconds)
            print(f"step {(block + 1) * cfg.period} of {blocks * cfg.period}: {so_far}", flush=True)

    by_epoch = []
    for epoch in range(cfg.epochs):  # timed block i is block i + 1 of the run
        part = [
            i
            for i in range(blocks - 1)
            if min((i + 1) * cfg.period // steps_per_epoch, cfg.epochs - 1) == epoch
        ]
        plain_part = [plain.block_seconds[i] for i in part]
        trp_part = [trained.block_seconds[i] for i in part]
        by_epoch.append(
            {
                "epoch": epoch + 1,
                **overhead(plain_part, trp_part),
                "projection_share_of_trp_time": round(
                    sum(projection_seconds[i] for i in part) / sum(trp_part), 4
                ),
                "projection_s_mean": round(statistics.mean(projection_seconds[i] for i in part), 4),
                "full_decompositions": sum(full[i] for i in part),
                "projections": len(part),
            }
        )
        print(json.dumps(by_epoch[-1]), flush=True)
    timed_steps = len(trained.block_seconds) * cfg.period
    pairs = list(zip(trained.step_seconds, plain.step_seconds, strict=True))
    result = {
        "setting": {
            "model": f"{recipe.defaults.model}, in_chans=1, num_classes=10, "
            f"{recipe.defaults.model_kwargs} ({recipe.script})",
            "optimizer": {
                "name": type(plain.optimizer).__name__,
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                **({"momentum": cfg.momentum} if cfg.opt == "sgd" else {}),
                "schedule": f"{cfg.sched} over {cfg.epochs} epochs, "
                f"warmup {cfg.warmup_epochs} epochs",
                "label_smoothing": cfg.label_smoothing,
            },
            "input": [1, 28, 28],
            "batch_size": cfg.batch_size,
            "data": source,
            "scheme": cfg.scheme,
            "layers": cfg.layers,
            "energy": cfg.energy,
            "period": cfg.period,
            "nuclear_weight": cfg.nuclear_weight,
            "method": args.method,
            "control_no_trp": args.control,
            "steps_per_model": blocks * cfg.period,
            "timed_steps_per_model": timed_steps,
            "threads": torch.get_num_threads(),
        },
        "plain_step_s": round(sum(plain.block_seconds) / timed_steps, 5),
        "trp_step_s": round(sum(trained.block_seconds) / timed_steps, 5),
        **overhead(plain.block_seconds, trained.block_seconds),
        "projection_share_of_trp_time": round(
            sum(projection_seconds) / sum(trained.block_seconds), 4
        ),
        "projection_s_mean": round(statistics.mean(projection_seconds), 4),
        "full_decompositions": sum(full),
        "tracked_decompositions": hook.tracked_decompositions,
        "by_epoch": by_epoch,
        # step i of a block is optimizer step 20b + i: TRP projects after step 18 (its
        # 19th, ``TRP.is_period_step``) and adds the nuclear-norm direction in step 19
        "median_overhead_pct_by_step_in_block": [
            round(100 * (statistics.median(t[i] / p[i] for t, p in pairs) - 1), 1)
            for i in range(cfg.period)
        ],
        "ranks_at_end": hook.ranks,
        "projection_s_by_method_on_final_weights": {
            m: round(projection_cost(trained.model, m, cfg), 4)
            for m in (() if args.control else METHODS)
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "software": software_versions(),
        "command": shlex.join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(args.output, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("ranks_at_end", "machine", "by_epoch")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
