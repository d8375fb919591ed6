"""TRP side by side with what users would pick instead, at equal measured latency.

Fashion-MNIST, timm resnet18 (1x28x28), the recipe ``recipes/fashion_mnist_resnet18.py``'s
data pipeline and optimizer (SGD lr 0.1, momentum 0.9, wd 5e-4, cosine, batch 128) for
every row. Every method gets the same training budget of ``--epochs`` epochs:

- **dense**: the baseline, ``--epochs`` epochs.
- **TRP+Nu channel / spatial**: the recipe at each ``--energies`` operating point.
- **TRP, latency-aware plan**: the recipe with ``--target-latency`` set to the channel
  row's MACs fraction (``runtime.planner`` on ONNX Runtime, batch 8, one thread).
- **TRP + distillation**: the channel row with ``--distill-from`` the dense baseline
  (the teacher's own training is not counted, as in the ImageNet protocol, which starts
  from a dense model anyway).
- **SVD + fine-tune**: a dense model trained for half the budget, decomposed by SVD at the
  channel row's ranks, fine-tuned for the other half (lr 0.01: a fine-tune's setting).
- **Torch-Pruning**: the same half-budget dense model, pruned by ``torch_pruning``'s
  ``MetaPruner`` (group L2-magnitude importance, channels rounded to multiples of 8, the
  classifier kept) in ``--prune-steps`` steps, each followed by an equal share of the
  other half of the budget as fine-tuning (lr 0.01), to the channel row's MACs.
- **narrower resnet18**: channel widths scaled (multiples of 8) to the channel row's MACs,
  trained from scratch for the whole budget.

All models are deployed the same way: ``runtime`` exports them to ONNX (low-rank ranks
padded to multiples of 16, as ``python -m runtime.build_engine`` does), builds ONNX Runtime
CPU fp32 engines, checks each engine's top-1 on the whole test split, and times every
engine interleaved in one run (batch 1 and 32, one thread). Results:
``benchmarks/results/peers.{json,md,png}`` (top-1 against latency and against MACs, the
Pareto front marked). Training runs live in ``--work-dir`` and are reused or resumed.

    pip install -e '.[bench]'    # torch-pruning
    python benchmarks/peers.py --epochs 4 --energies 0.99,0.98,0.97

The committed results (2 epochs a row, energy 0.98; seed 1 repeats the deciding rows)::

    python benchmarks/peers.py --epochs 2 --energies 0.98 --seeds 0,1 \
        --later-seed-methods 'TRP latency plan,SVD + fine-tune,Torch-Pruning,narrower resnet18' \
        --work-dir runs/peers-e2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from fmnist_runs import RESNET18, ROOT, FmnistRecipe
from int8_stack import pareto
from torch import nn

import trp_zoo
from runtime.backends import get_backend
from runtime.build import build
from runtime.checks import check_agreement
from runtime.data import fashion_mnist
from runtime.engine import Engine
from runtime.latency import measure_interleaved
from runtime.report import environment, load_average
from trp_zoo.algorithms.rank_alignment import pad_ranks
from trp_zoo.algorithms.rank_selection import energy_for_macs
from trp_zoo.data.fashion_mnist import MEAN, STD
from trp_zoo.fileio import write_json, write_text
from trp_zoo.models.dense import create_dense_model
from trp_zoo.train.data import build_data
from trp_zoo.train.distributed import init_distributed
from trp_zoo.train.resume import load_latest
from trp_zoo.train.trainer import Trainer

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
INPUT = (1, 28, 28)
BATCHES = (1, 32)
FINETUNE_LR = 0.01
CHANNEL_MULTIPLE = 8
RANK_MULTIPLE = 16
WIDTHS = (64, 128, 256, 512)
METHODS = (
    "TRP+Nu spatial",
    "TRP+Nu channel + distillation",
    "TRP latency plan",
    "SVD + fine-tune",
    "Torch-Pruning",
    "narrower resnet18",
)


def macs(model: nn.Module) -> int:
    return trp_zoo.count_flops(model, INPUT)


# -- the peers ---------------------------------------------------------------------------
def narrow_resnet18(scale: float) -> nn.Module:
    channels = tuple(max(CHANNEL_MULTIPLE, round(w * scale / 8) * 8) for w in WIDTHS)
    return create_dense_model(
        "resnet18", num_classes=10, in_chans=1, channels=channels, stem_width=channels[0]
    )


def narrow_scale_for(target_macs: int) -> float:
    """The largest width scale of a resnet18 whose MACs stay within ``target_macs``
    (``energy_for_macs`` bisects any such increasing cost)."""
    return energy_for_macs(
        lambda s: macs(narrow_resnet18(s)), target_macs, low=0.05, high=1.0, steps=12
    )


LIMIT_BATCHES = 0  # --limit-train-batches: a quick check of the script, not a measurement


def _limit(batches: int) -> int:
    """``batches`` per epoch (0: all), capped by ``--limit-train-batches``."""
    if LIMIT_BATCHES:
        return min(batches, LIMIT_BATCHES) if batches else LIMIT_BATCHES
    return max(batches, 0)


def train_plain(
    recipe: FmnistRecipe, model: nn.Module, out: Path, epochs: float, lr: float, seed: int
) -> tuple[nn.Module, float]:
    """Train ``model`` without TRP in the recipe's engine for ``epochs`` (a fraction below
    one: that share of an epoch's batches) at ``lr``, resuming a killed run; returns the
    model and its top-1."""
    whole = int(epochs)
    cfg = dataclasses.replace(
        recipe.defaults,
        trp=False,
        epochs=max(whole, 1),
        lr=lr,
        seed=seed,
        progress=False,
        output_dir=str(out),
        limit_train_batches=_limit(
            0 if whole else round(epochs * 60000 / recipe.defaults.batch_size)
        ),
        model_name=None,
    )
    cfg.resume = load_latest(out) is not None
    trainer = Trainer(cfg, model, build_data("fashion_mnist", None), init_distributed("cpu"))
    trainer.fit()
    _, top1 = trainer.evaluate()
    return trainer.module.eval(), top1


def torch_pruned(
    recipe: FmnistRecipe,
    start: nn.Module,
    target_macs: int,
    work: Path,
    budget_epochs: float,
    steps: int,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """``start`` pruned by Torch-Pruning to at most ``target_macs`` (the smallest pruning
    ratio that gets there) in ``steps`` steps, each followed by ``budget_epochs / steps``
    epochs of fine-tuning."""
    import torch_pruning as tp

    def pruner(model: nn.Module, ratio: float) -> Any:
        return tp.pruner.MetaPruner(
            model,
            torch.randn(1, *INPUT),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=[model.get_submodule("fc")],  # the classifier keeps 10 outputs
            round_to=CHANNEL_MULTIPLE,
        )

    def pruned_macs(ratio: float) -> int:
        trial = copy.deepcopy(start)
        p = pruner(trial, ratio)
        for _ in range(steps):
            p.step()
        return macs(trial)

    keep = energy_for_macs(lambda k: pruned_macs(1 - k), target_macs, low=0.05, high=1.0, steps=10)
    ratio = 1 - keep
    model = copy.deepcopy(start)
    p = pruner(model, ratio)
    top1 = float("nan")
    for step in range(steps):
        p.step()
        out = work / f"step{step}"
        model, top1 = train_plain(recipe, model, out, budget_epochs / steps, FINETUNE_LR, seed)
        model.train()
    return model.eval(), {"pruning_ratio": round(ratio, 4), "steps": steps, "top1": top1}


# -- training the rows -------------------------------------------------------------------
def slug(label: str) -> str:
    """A row's run directory name."""
    return label.replace("+", "").replace(" ", "_")


def train_rows(
    args: argparse.Namespace, seed: int, methods: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Train (or reuse) the rows of one seed; returns ``{row: {model, facts}}``.

    ``methods``: train only the dense baseline, the TRP+Nu channel row (it sets every
    operating point) and rows of these methods (default: every row)."""

    def wanted(method: str) -> bool:
        return methods is None or method in methods or method == "TRP+Nu channel"

    recipe, work = RESNET18, args.work_dir / f"seed{seed}"
    half = args.epochs / 2
    common = ["--epochs", str(args.epochs), "--seed", str(seed), "--model-name", "none"]
    common += ["--no-progress", "--limit-train-batches", str(LIMIT_BATCHES)]
    rows: dict[str, dict[str, Any]] = {}
    dense_run = recipe.train_row("dense", work, common, ["--no-trp"])
    dense = recipe.trained_dense(work / "dense")
    rows["dense"] = {
        "model": dense,
        "method": "dense",
        "facts": {"top1": dense_run["dense"]["top1"]},
    }
    teacher = work / "dense" / "teacher.pth"
    if not teacher.is_file():
        torch.save(dense.state_dict(), teacher)
    half_args = ["--epochs", str(int(half)), "--seed", str(seed), "--model-name", "none"]
    half_args += ["--no-progress", "--limit-train-batches", str(LIMIT_BATCHES)]
    recipe.train_row("dense_half", work, half_args, ["--no-trp"])
    half_dense = recipe.trained_dense(work / "dense_half")
    for energy in args.energies:
        tag = f"e{energy}"
        trp = {
            f"TRP+Nu channel {tag}": ["--scheme", "channel", "--energy", str(energy)],
            f"TRP+Nu spatial {tag}": ["--scheme", "spatial", "--energy", str(energy)],
            f"TRP+Nu channel + distillation {tag}": [
                "--scheme",
                "channel",
                "--energy",
                str(energy),
                "--distill-from",
                str(teacher),
            ],
        }
        channel: dict[str, Any] = {}
        for label, extra in trp.items():
            method = label.rsplit(" ", 1)[0]
            if not wanted(method):
                continue
            run = recipe.train_row(slug(label), work, common, extra)
            model = trp_zoo.load(str(work / slug(label) / "model"))
            rows[label] = {"model": model, "method": method, "energy": energy}
            rows[label]["facts"] = {"top1": run["decomposed"]["top1"]}
            if not channel:
                channel = run["decomposed"]
        target_macs = int(channel["macs"])
        fraction = round(target_macs / macs(dense), 3)
        name = f"TRP latency plan {tag}"
        if wanted("TRP latency plan"):
            latency = ["--scheme", "channel", "--energy", str(energy)]
            run = recipe.train_row(
                slug(name), work, common, [*latency, "--target-latency", str(fraction)]
            )
            rows[name] = {
                "model": trp_zoo.load(str(work / slug(name) / "model")),
                "method": "TRP latency plan",
                "energy": energy,
                "facts": {"top1": run["decomposed"]["top1"], "target_latency": fraction},
            }
        if wanted("SVD + fine-tune"):
            svd = trp_zoo.decompose(half_dense, "channel", rank=channel["rank_plan"])
            svd, top1 = train_plain(
                recipe, svd, work / f"svd_ft_{tag}", args.epochs - half, FINETUNE_LR, seed
            )
            rows[f"SVD + fine-tune {tag}"] = {
                "model": svd,
                "method": "SVD + fine-tune",
                "energy": energy,
                "facts": {"top1": top1},
            }
        if wanted("Torch-Pruning"):
            pruned, facts = torch_pruned(
                recipe,
                half_dense,
                target_macs,
                work / f"torch_pruning_{tag}",
                args.epochs - half,
                args.prune_steps,
                seed,
            )
            rows[f"Torch-Pruning {tag}"] = {
                "model": pruned,
                "method": "Torch-Pruning",
                "energy": energy,
                "facts": facts,
            }
        if wanted("narrower resnet18"):
            scale = narrow_scale_for(target_macs)
            narrow = narrow_resnet18(scale)
            out = work / f"narrow_{tag}"
            if not (out / "narrow.pth").is_file():
                lr = recipe.defaults.lr
                narrow, _ = train_plain(recipe, narrow, out, args.epochs, lr, seed)
                torch.save(narrow.state_dict(), out / "narrow.pth")
            narrow.load_state_dict(torch.load(out / "narrow.pth", weights_only=True))
            rows[f"narrower resnet18 {tag}"] = {
                "model": narrow.eval(),
                "method": "narrower resnet18",
                "energy": energy,
                "facts": {"width_scale": round(scale, 3)},
            }
    return rows


# -- deploying and timing ----------------------------------------------------------------
def deploy(
    rows: dict[str, dict[str, Any]], workdir: Path, threads: int, warmup: int, runs: int
) -> dict[str, dict[str, Any]]:
    """Engines for every row: engine top-1 on the test split, latency timed interleaved."""
    backend = get_backend("onnxruntime", spinning=False)
    test = fashion_mnist(INPUT, (MEAN,), (STD,))
    engines: dict[str, Engine] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for i, (label, row) in enumerate(rows.items()):
            model = pad_ranks(row["model"], RANK_MULTIPLE).eval()
            engines[label] = build(
                model,
                workdir / f"row{i}{backend.engine_suffix}",
                backend=backend.name,
                precision="fp32",
                batch_sizes=BATCHES,
                input_size=INPUT,
                threads=threads,
                spinning=False,
            )
            agreement = check_agreement(engines[label], row["model"], test, batch_size=256)
            out[label] = {
                "method": row["method"],
                "energy": row.get("energy"),
                "macs": macs(row["model"]),
                "params": sum(p.numel() for p in row["model"].parameters()),
                "top1": round(float(agreement.engine_top1 or 0.0), 2),
                "torch_top1": round(float(agreement.torch_top1 or 0.0), 2),
                **row["facts"],
            }
        load_before = load_average()
        timings = measure_interleaved(
            engines, BATCHES, warmup=warmup, runs=runs, progress=sys.stderr.isatty()
        )
    finally:
        for engine in engines.values():
            engine.close()
    dense = out["dense"]
    for label, row in out.items():
        row["macs_reduction"] = round(dense["macs"] / row["macs"], 3)
        for batch in BATCHES:
            p50 = timings[batch][label].p50_ms
            row[f"p50_ms_b{batch}"] = round(p50, 3)
            row[f"speedup_b{batch}"] = round(timings[batch]["dense"].p50_ms / p50, 3)
        row["load_average_1min"] = [load_before, load_average()]
    return out


# -- reporting ---------------------------------------------------------------------------
def on_front(rows: dict[str, dict[str, Any]], batch: int) -> set[str]:
    points = [(r[f"p50_ms_b{batch}"], r["top1"], label) for label, r in rows.items()]
    return {label for _, _, label in pareto(points)}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [result["setting"], ""]
    for seed, rows in result["seeds"].items():
        front = on_front(rows, 32)
        lines += [
            f"### seed {seed}",
            "",
            "| row | top-1 (%) | MACs | MACs reduction | p50 ms @1 | speed-up @1 | "
            "p50 ms @32 | speed-up @32 | speed-up / MACs reduction @32 | Pareto @32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for label, r in sorted(rows.items(), key=lambda kv: kv[1]["p50_ms_b32"]):
            quotient = r["speedup_b32"] / r["macs_reduction"]
            lines.append(
                f"| {label} | {r['top1']:.2f} | {r['macs'] / 1e6:.1f}M | {r['macs_reduction']:.2f}x"
                f" | {r['p50_ms_b1']:.2f} | {r['speedup_b1']:.2f}x | {r['p50_ms_b32']:.2f} | "
                f"{r['speedup_b32']:.2f}x | {quotient:.2f} | {'yes' if label in front else ''} |"
            )
        lines.append("")
    lines.append(f"Produced by `{result['command']}` on {result['date']}.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    from trp_zoo.train.plots import save_png  # selects matplotlib's Agg backend

    rows = next(iter(result["seeds"].values()))
    methods = sorted({r["method"] for r in rows.values()})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, xlabel in (
        (axes[0], "p50_ms_b32", "median latency at batch 32 (ms, ONNX Runtime CPU, 1 thread)"),
        (axes[1], "macs", "MACs per image"),
    ):
        for method in methods:
            pts = [(r[key], r["top1"]) for r in rows.values() if r["method"] == method]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, label=method)
        front = pareto([(r[key], r["top1"], label) for label, r in rows.items()])
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Fashion-MNIST test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("resnet18 on Fashion-MNIST, same training budget for every method")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4, help="training budget of every row")
    parser.add_argument("--energies", default="0.99,0.98,0.97", help="TRP operating points")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument(
        "--later-seed-methods",
        default="",
        help="comma-separated methods the seeds after the first train and time, besides the "
        "dense baseline and TRP+Nu channel (the rows that decide the ranking; default: all), "
        f"from: {', '.join(METHODS)}",
    )
    parser.add_argument("--prune-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "peers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--limit-train-batches",
        type=int,
        default=0,
        help="cap every epoch at N batches: a quick check of the script (with --output "
        "and --work-dir elsewhere), not a measurement",
    )
    args = parser.parse_args(argv)
    try:
        args.energies = [float(e) for e in args.energies.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error("--energies and --seeds are comma-separated numbers, e.g. 0.99,0.98")
    args.later_seed_methods = (
        {m.strip() for m in args.later_seed_methods.split(",")} if args.later_seed_methods else None
    )
    unknown = sorted((args.later_seed_methods or set()) - set(METHODS))
    if unknown:
        parser.error(f"unknown --later-seed-methods {unknown}; choose from {', '.join(METHODS)}")
    if args.epochs < 2 or args.epochs % 2:
        parser.error(
            "--epochs must be even and >= 2 (half of it trains the dense start of the "
            f"fine-tuned rows), got {args.epochs}"
        )
    if not all(0 < e < 1 for e in args.energies):
        parser.error(f"--energies must lie in (0, 1), got {args.energies}")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        parser.error("the Torch-Pruning rows need torch-pruning: pip install -e '.[bench]'")
    return args


def main(argv: list[str] | None = None) -> None:
    global LIMIT_BATCHES
    args = parse_args(argv)
    LIMIT_BATCHES = args.limit_train_batches
    seeds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(args.seeds):
            rows = train_rows(args, seed, args.later_seed_methods if i else None)
            seeds[str(seed)] = deploy(rows, Path(tmp), args.threads, args.warmup, args.runs)
    result = {
        "setting": (
            f"Fashion-MNIST, timm resnet18 1x28x28, {args.epochs} epochs of training per row "
            f"(SVD + fine-tune and Torch-Pruning: {args.epochs / 2:g} dense + {args.epochs / 2:g} "
            f"fine-tune at lr {FINETUNE_LR}), energies {args.energies}, seeds {args.seeds} "
            f"(after the first: dense, TRP+Nu channel and "
            f"{sorted(args.later_seed_methods) if args.later_seed_methods else 'every row'}); "
            f"ONNX Runtime CPU fp32, {args.threads} thread(s), {args.runs} interleaved runs per "
            "engine and batch; speed-up = dense median latency / row median latency"
        ),
        "seeds": seeds,
        "environment": environment(),
        "command": shlex.join(
            ["python", "benchmarks/peers.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": dt.date.today().isoformat(),
    }
    write_json(args.output, result)
    write_text(args.output.with_suffix(".md"), to_markdown(result))
    plot(result, args.output.with_suffix(".png"))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
