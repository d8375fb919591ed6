"""The paper's comparison on Fashion-MNIST, one training budget for all rows.

``--recipe`` picks the model: ``resnet18`` (``recipes/fashion_mnist_resnet18.py``, the
default), ``vit`` or ``convnext`` (``recipes/fashion_mnist_{vit,convnext}.py``, whose
compute sits in ``nn.Linear``). Rows, each trained with the recipe for the same epochs,
batch size, optimizer and schedule:

1. dense baseline (no TRP);
2. nuclear-norm regularization only, then decomposed at the same energy as TRP (resnet18);
3. TRP + nuclear norm, channel scheme (the only form of a Linear);
4. TRP + nuclear norm, spatial scheme (resnet18);
5. the dense baseline decomposed directly by SVD (one energy threshold for every layer
   TRP targets, found by bisection so its MACs match row 3), without fine-tuning;
6. row 5 after a short fine-tune (``--finetune-epochs``).

Writes ``benchmarks/results/fashion_mnist_table.{json,md}`` (``fashion_mnist_table_vit``
etc. for the others). Training runs live in ``--work-dir`` and are reused (or resumed
after a kill) on the next call, so the table can be built in stages. Long: about an
hour per 10-epoch budget on 2 CPU cores.

    python benchmarks/fashion_mnist_table.py --epochs 10
    python benchmarks/fashion_mnist_table.py --recipe vit --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import torch
from fmnist_runs import FMNIST_RECIPES, ROOT, FmnistRecipe

import trp_zoo
from trp_zoo import EnergyThreshold, compare_cost, decompose, rank_plan
from trp_zoo.algorithms.rank_selection import energy_for_macs
from trp_zoo.fileio import write_json, write_text
from trp_zoo.lowrank.linears import LayerKind
from trp_zoo.train.data import build_data
from trp_zoo.train.distributed import init_distributed
from trp_zoo.train.resume import load_latest
from trp_zoo.train.trainer import Trainer

RESULTS = ROOT / "benchmarks" / "results"


def svd_energy_for_macs(
    model: torch.nn.Module,
    target_macs: int,
    input_size: tuple[int, int, int],
    layers: LayerKind,
) -> float:
    """The energy threshold whose direct SVD of ``model`` reaches ``target_macs``."""

    def macs_at(energy: float) -> int:
        rank = EnergyThreshold(energy)
        low = decompose(model, "channel", rank=rank, method="gram", layers=layers)
        return trp_zoo.count_flops(low, input_size)

    return energy_for_macs(macs_at, target_macs, low=0.05, high=0.99999, steps=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", choices=sorted(FMNIST_RECIPES), default="resnet18")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--energy", type=float, help="default: the recipe's")
    parser.add_argument("--period", type=int, help="default: the recipe's")
    parser.add_argument("--nuclear-weight", type=float, help="default: the recipe's")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, help="default: 0.1 of the recipe's lr")
    parser.add_argument("--work-dir", type=Path, help="default: runs/fashion_mnist_table[_RECIPE]")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/ the same name")
    args = parser.parse_args()
    recipe = FmnistRecipe(FMNIST_RECIPES[args.recipe])
    d = recipe.defaults
    suffix = "" if args.recipe == "resnet18" else f"_{args.recipe}"
    args.energy = d.energy if args.energy is None else args.energy
    args.period = d.period if args.period is None else args.period
    args.nuclear_weight = d.nuclear_weight if args.nuclear_weight is None else args.nuclear_weight
    args.finetune_lr = d.lr / 10 if args.finetune_lr is None else args.finetune_lr
    args.work_dir = args.work_dir or ROOT / "runs" / f"fashion_mnist_table{suffix}"
    args.output = args.output or RESULTS / f"fashion_mnist_table{suffix}"

    common = [
        "--epochs",
        str(args.epochs),
        "--energy",
        str(args.energy),
        "--period",
        str(args.period),
        "--nuclear-weight",
        str(args.nuclear_weight),
        "--model-name",
        "none",
        "--no-progress",
    ]
    start = time.time()
    rows: dict[str, dict[str, Any]] = {}
    # the rows the headline claim needs come first; the table is rewritten after each row
    runs = {"dense": ["--no-trp"], "trp_channel": ["--scheme", "channel"]}
    if args.recipe == "resnet18":  # a Linear has one factorized form, no spatial scheme
        runs |= {
            "nuclear_only": ["--no-project", "--scheme", "channel"],
            "trp_spatial": ["--scheme", "spatial"],
        }
    trp_tag = f"ep{args.epochs}_en{args.energy}_p{args.period}_nw{args.nuclear_weight}"
    direct: dict[str, Any] = {}
    for name, extra in runs.items():
        tag = f"ep{args.epochs}" if name == "dense" else trp_tag  # runs are reused per setting
        rows[name] = recipe.train_row(f"{name}_{tag}", args.work_dir, common, extra)
        if name == "trp_channel":
            direct = direct_svd(args, recipe, rows, trp_tag)
        write_table(args, recipe, rows, direct, start, expected=len(runs) + 2)


def direct_svd(
    args: argparse.Namespace, recipe: FmnistRecipe, rows: dict[str, Any], trp_tag: str
) -> dict[str, Any]:
    """The dense baseline decomposed by SVD at the TRP channel row's MACs: top-1 before and
    after a short fine-tune."""
    data = build_data("fashion_mnist", None)
    cfg = dataclasses.replace(
        recipe.defaults,
        trp=False,
        epochs=args.finetune_epochs,
        lr=args.finetune_lr,
        warmup_epochs=0,
        progress=False,
        output_dir=str(args.work_dir / f"direct_svd_finetune_{trp_tag}"),
    )
    dense = recipe.trained_dense(args.work_dir / f"dense_ep{args.epochs}", cfg)
    target = rows["trp_channel"]["decomposed"]["macs"]
    energy = svd_energy_for_macs(dense, target, data.input_size, cfg.layers)
    direct = decompose(dense, "channel", rank=EnergyThreshold(energy), layers=cfg.layers)
    info = init_distributed("cpu")
    trainer = Trainer(cfg, copy.deepcopy(direct), data, info)
    _, direct_top1 = trainer.evaluate(direct)
    cost = compare_cost(dense, direct, data.input_size)
    ft_dir = Path(cfg.output_dir)
    if load_latest(ft_dir) is not None:
        cfg.resume = True
        trainer = Trainer(cfg, copy.deepcopy(direct), data, info)
    trainer.fit()
    _, ft_top1 = trainer.evaluate()
    return {
        "energy": energy,
        "top1": direct_top1,
        "finetuned_top1": ft_top1,
        "macs": cost.factorized_macs,
        "params": cost.factorized_params,
        "rank_plan": rank_plan(direct),
    }


ROW_LABELS = {
    "nuclear_only": "nuclear norm only, then decomposed (channel)",
    "trp_channel": "TRP+Nu channel, decomposed",
    "trp_spatial": "TRP+Nu spatial, decomposed",
}


def table_rows(
    args: argparse.Namespace, rows: dict[str, Any], direct: dict[str, Any]
) -> list[dict[str, Any]]:
    """The table's rows, each against the dense baseline of the same budget."""
    dense_row = rows["dense"]["dense"]

    def entry(label: str, top1: float, macs: int, params: int, **extra: Any) -> dict[str, Any]:
        return {
            "row": label,
            "top1": round(top1, 2),
            "top1_change": round(top1 - dense_row["top1"], 2),
            "macs": macs,
            "params": params,
            "macs_reduction": round(dense_row["macs"] / macs, 2),
            **extra,
        }

    def decomposed(name: str, label: str) -> dict[str, Any]:
        low = rows[name].get("decomposed")
        if low is None:  # no layer's rank lowered its cost: the model stays dense
            trained = rows[name]["dense"]
            return entry(
                f"{label}: nothing to decompose (no rank lowers a layer's cost)",
                trained["top1"],
                trained["macs"],
                trained["params"],
            )
        return entry(
            label,
            low["top1"],
            low["macs"],
            low["params"],
            before_decomposition_top1=round(rows[name]["dense"]["top1"], 2),
        )

    table = [entry("dense baseline", dense_row["top1"], dense_row["macs"], dense_row["params"])]
    table += [decomposed(name, label) for name, label in ROW_LABELS.items() if name in rows]
    if direct:
        table += [
            entry(
                "dense decomposed by SVD at TRP channel MACs, no fine-tuning",
                direct["top1"],
                direct["macs"],
                direct["params"],
                energy=round(direct["energy"], 5),
            ),
            entry(
                f"same, fine-tuned {args.finetune_epochs} epoch(s) at lr {args.finetune_lr}",
                direct["finetuned_top1"],
                direct["macs"],
                direct["params"],
            ),
        ]
    return table


def write_table(
    args: argparse.Namespace,
    recipe: FmnistRecipe,
    rows: dict[str, Any],
    direct: dict[str, Any],
    start: float,
    expected: int,
) -> None:
    """Write the rows trained so far to the results files (and print them)."""
    table = table_rows(args, rows, direct)
    d = recipe.defaults
    kwargs = "".join(f", {k}={v}" for k, v in d.model_kwargs.items())
    result = {
        "setting": {
            "recipe": recipe.script,
            "model": f"timm {d.model}(in_chans=1{kwargs}), 28x28",
            "layers": d.layers,
            "data": "Fashion-MNIST (60k train / 10k test)",
            "epochs": args.epochs,
            "batch_size": d.batch_size,
            "optimizer": d.opt,
            "lr": d.lr,
            "schedule": d.sched,
            "warmup_epochs": d.warmup_epochs,
            "weight_decay": d.weight_decay,
            "energy": args.energy,
            "period": args.period,
            "nuclear_weight": args.nuclear_weight,
            "direct_svd_rank_plan": direct.get("rank_plan"),
        },
        "rows": table,
        "complete": len(table) == expected,
        "command": "python benchmarks/fashion_mnist_table.py " + " ".join(sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "wall_seconds_this_call": round(time.time() - start),
        "trp_zoo": trp_zoo.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output.with_suffix(".json"), result)
    write_text(args.output.with_suffix(".md"), markdown(result))
    print(markdown(result), flush=True)


def markdown(result: dict[str, Any]) -> str:
    s = result["setting"]
    lines = [
        f"Fashion-MNIST, {s['model']}, {s['epochs']} epochs per row, batch {s['batch_size']}, "
        f"{s.get('optimizer', 'sgd')} {s['schedule']} lr {s['lr']}, energy {s['energy']}, "
        f"period {s['period']}, "
        f"nuclear weight {s['nuclear_weight']}.",
        "",
        "| row | top-1 (%) | change vs dense | MACs | MACs reduction | params |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['row']} | {r['top1']:.2f} | {r['top1_change']:+.2f} | {r['macs'] / 1e6:.2f}M | "
            f"{r['macs_reduction']:.2f}x | {r['params'] / 1e6:.2f}M |"
        )
    if not result.get("complete", True):
        lines += ["", "Partial: the remaining rows were still training when this was written."]
    lines += ["", f"Produced by `{result['command'].strip()}` on {result['date']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
