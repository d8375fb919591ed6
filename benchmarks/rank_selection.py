"""Energy-threshold vs latency-aware rank plans: speed, MACs and accuracy, measured.

Two ways to pick per-layer ranks for the channel scheme:

- *energy threshold* (TRP's own criterion): every layer keeps the smallest rank holding a
  fraction ``e`` of its squared singular values; ``e`` is bisected so the MACs drop
  ``--macs-reduction`` times (2.2x by default). Shown as is and with its ranks padded to
  multiples of 16 (what ``python -m runtime.build_engine`` deploys by default; same
  function, so same accuracy);
- *latency-aware* (``runtime.planner``): per-layer cost tables measured on the target,
  ranks chosen from the measured multiples to keep the most energy within a budget, with
  a predicted speed-up of at least the plan's MACs reduction (``min_quotient=1.0``).

Stages (each updates its part of ``benchmarks/results/rank_selection.{json,md}``):

    python benchmarks/rank_selection.py latency         # resnet50 + resnet18, 224x224
    python benchmarks/rank_selection.py fmnist-plans    # resnet18, 1x28x28: both plans
    python benchmarks/rank_selection.py fmnist-train    # fine-tunes them with the recipe

``latency``: for each model and batch size, round 1 times dense, the energy plan (raw and
padded) and the latency-aware plan with the energy plan's MACs (``--macs`` budget), all
interleaved in one process; round 2 calibrates the latency-aware plan to the faster energy
variant's measured latency fraction (``Planner.calibrate``: the budget corrected by what
each attempt measures, until within 3%), then times the two interleaved. Reported: speed-up
(ratio of median latencies), MACs reduction and their quotient, and the mean kept energy.

``fmnist-plans`` does the same at 1x28x28 for the trained dense Fashion-MNIST resnet18
(``--dense-run``: the dense row of ``benchmarks/fashion_mnist_table.py``), so kept energy
is that of learned spectra. At equal measured latency it compares the padded energy plan
with three latency-aware ones, each calibrated to its measured latency: with the
``min_quotient=1.0`` constraint, without it (accuracy first), and without it priced by
measured sensitivity on ``--sensitivity-images`` Fashion-MNIST training images
(``trp_zoo.algorithms.sensitivity``). It writes each plan as a rank-plan file and evaluates each
plan decomposed without fine-tuning. ``fmnist-train`` fine-tunes the dense weights with
``recipes/fashion_mnist_resnet18.py --pretrained dense.pth --rank-plan FILE --energy 1.0``
(TRP projects onto exactly the planned ranks, so the final model has the plan's latency),
the same epochs and learning rate for every plan.

Weights are random (timm's init, seed 0) for the latency stages: their spectra are nearly
flat, so kept energy there measures how much of each layer's dimensions survive, not
learned importance. ONNX Runtime on CPU, one intra-op thread, spinning off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch
from fmnist_runs import evaluation_trainer, train_row, trained_dense
from torch import nn

from runtime.cost_cache import CostCache
from runtime.data import sensitivity_images
from runtime.planner import Planner
from runtime.report import environment, load_average
from runtime.target import Target
from trp_zoo import decompose
from trp_zoo.algorithms.rank_alignment import padded_plan
from trp_zoo.algorithms.rank_selection import energy_for_macs
from trp_zoo.fileio import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rank_selection.json"
WORK = ROOT / "runs" / "rank_selection"
SCHEME = "channel"
GOAL_ARCH, GOAL_BATCH, GOAL_QUOTIENT = "resnet50", 8, 1.0
TOLERANCE = 0.03  # equal latency: measured fractions within 3%


def energy_plan_for_macs(planner: Planner, fraction: float) -> tuple[float, dict[str, int]]:
    """The energy threshold whose plan has the largest MACs at or below ``fraction``."""
    energy = energy_for_macs(
        lambda e: planner.macs(planner.energy_plan(e)), fraction * planner.dense_macs
    )
    return energy, planner.energy_plan(energy)


def describe(
    planner: Planner,
    label: str,
    plan: dict[str, int],
    stats: dict[str, Any],
    energy_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One plan's row: MACs, energy, measured speed-up and quotient, prediction if any."""
    dense, mine = stats["dense"], stats[label]
    macs = planner.macs(plan)
    speedup = dense.p50_ms / mine.p50_ms
    reduction = planner.dense_macs / macs
    predicted = planner.predicted_ms(plan)
    return {
        "plan": label,
        "factorized_layers": len(plan),
        "ranks_multiple_of_16": sum(r % 16 == 0 for r in plan.values()),
        "mean_kept_energy": round(
            planner.mean_energy(energy_of if energy_of is not None else plan), 4
        ),
        "macs": macs,
        "macs_reduction": round(reduction, 3),
        "dense_p50_ms": round(dense.p50_ms, 2),
        "p50_ms": round(mine.p50_ms, 2),
        "latency_fraction": round(mine.p50_ms / dense.p50_ms, 4),
        "speedup": round(speedup, 3),
        "quotient": round(speedup / reduction, 3),
        "predicted_latency_fraction": (
            round(predicted / planner.dense_ms, 4) if predicted is not None else None
        ),
        "ranks": plan,
    }


def compare(
    arch: str,
    input_size: tuple[int, int, int],
    batch: int,
    macs_reduction: float,
    cache: CostCache,
    runs: int,
    warmup: int,
    model: torch.nn.Module | None = None,
) -> tuple[dict[str, Any], Planner]:
    """Energy vs latency-aware plans for one model and batch size (see the module doc),
    and the planner that chose them; ``model``: trained weights for ``arch`` (default:
    timm's random init, seed 0)."""
    if model is None:
        torch.manual_seed(0)
        model = timm.create_model(arch, in_chans=input_size[0])
    model = model.eval()
    target = Target(batch_size=batch, input_size=input_size, threads=1)
    log = lambda s: print(f"[{arch} b{batch}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    planner = Planner(model, target, SCHEME, cache=cache, runs=runs, warmup=warmup, progress=log)
    table_seconds = time.time() - started
    threshold, energy = energy_plan_for_macs(planner, 1.0 / macs_reduction)
    geoms = {n: lc.probe.geom for n, lc in planner.table.layers.items()}
    energy16 = padded_plan(energy, geoms, SCHEME, 16)
    la_macs = planner.select(macs=planner.macs(energy) / planner.dense_macs)
    plans = {"energy": energy, "energy_pad16": energy16, "latency_aware_equal_macs": la_macs.plan}
    log("round 1: dense, energy, energy padded, latency-aware at equal MACs")
    load = [load_average()]
    stats = planner.measure(plans, runs=runs, warmup=warmup)
    load.append(load_average())
    round1 = [
        describe(planner, "energy", energy, stats),
        describe(planner, "energy_pad16", energy16, stats, energy_of=energy),
        describe(planner, "latency_aware_equal_macs", la_macs.plan, stats),
    ]
    best = min(round1[:2], key=lambda r: r["latency_fraction"])
    fraction = best["latency_fraction"]
    log(f"round 2: latency-aware calibrated to {best['plan']}'s measured fraction {fraction:.3f}")
    la, _, calibration = planner.calibrate(
        fraction, tolerance=TOLERANCE, runs=runs, warmup=warmup, progress=log
    )
    load.append(load_average())
    pair_plans = {best["plan"]: plans[best["plan"]], "latency_aware_equal_latency": la.plan}
    stats = planner.measure(pair_plans, runs=runs, warmup=warmup)
    load.append(load_average())
    pair = [
        describe(planner, best["plan"], plans[best["plan"]], stats, energy_of=energy),
        describe(planner, "latency_aware_equal_latency", la.plan, stats),
    ]
    pair[1]["latency_budget"] = round(calibration[-1]["budget"], 4)
    row = {
        "arch": arch,
        "input_size": list(input_size),
        "batch": batch,
        "target": planner.table.target_key,
        "energy_threshold": round(threshold, 5),
        "dense_macs": planner.dense_macs,
        "cost_table": {
            "layers": len(planner.table.layers),
            "probes_timed": len(planner.table.measured),
            "probes_from_cache": len(planner.table.reused),
            "seconds": round(table_seconds, 1),
        },
        "equal_macs": round1,
        "equal_latency": pair,
        "equal_latency_attempts": len(calibration),
        "calibration": calibration,
        "own_ranks_kept_energy": {  # each plan's own truncation (padded ranks keep more)
            "energy": round(planner.mean_energy(energy), 4),
            "energy_pad16": round(planner.mean_energy(energy16), 4),
            "latency_aware_equal_macs": round(la_macs.mean_energy, 4),
            "latency_aware_equal_latency": round(la.mean_energy, 4),
        },
        "load_average_1min": load,
    }
    return row, planner


# ----------------------------------------------------------------------------- stages


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, result: dict[str, Any]) -> None:
    result["environment"] = environment()
    result["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(path, result)
    write_text(path.with_suffix(".md"), markdown(result))


def stage_latency(args: argparse.Namespace, result: dict[str, Any]) -> None:
    # rows of other models / batch sizes from earlier calls are kept
    done = {(a, b) for a in args.archs for b in args.batches}
    rows = [
        r for r in result.get("latency", {}).get("rows", []) if (r["arch"], r["batch"]) not in done
    ]
    for arch in args.archs:
        for batch in args.batches:
            row, _ = compare(
                arch,
                (3, 224, 224),
                batch,
                args.macs_reduction,
                CostCache(args.cache_dir),
                args.runs,
                args.warmup,
            )
            rows.append(row)
            result["latency"] = {"rows": rows, "macs_reduction_target": args.macs_reduction}
            save_results(args.output, result)
    result["goal"] = goal(rows)


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    row = next((r for r in rows if r["arch"] == GOAL_ARCH and r["batch"] == GOAL_BATCH), None)
    value = row["equal_latency"][1]["quotient"] if row else float("nan")
    return {
        "description": (
            f"{GOAL_ARCH} at batch {GOAL_BATCH}: the latency-aware plan (latency budget) "
            f"realizes at least its full MACs reduction as speed-up (quotient >= {GOAL_QUOTIENT})"
        ),
        "measured": value,
        "met": bool(value >= GOAL_QUOTIENT),
    }


FMNIST_SIZE = (1, 28, 28)


def fmnist_sensitivity_images(model: nn.Module, count: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST training images, normalized as the recipe does."""
    return sensitivity_images("fashion-mnist", model, FMNIST_SIZE, count)


# the plans compared at equal measured latency on Fashion-MNIST, after the energy plan
FMNIST_LATENCY_AWARE = {
    "latency_aware_q1": "energy objective, predicted speed-up >= MACs reduction (--min-quotient 1)",
    "latency_aware": "energy objective, accuracy first (--min-quotient 0)",
    "latency_aware_kl": "measured sensitivity objective, accuracy first (--sensitivity-data)",
}


def stage_fmnist_plans(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Plans for the trained dense Fashion-MNIST resnet18 (``--dense-run``), timed at 1x28x28,
    the latency-aware variants calibrated to the padded energy plan's measured latency, and
    each plan's top-1 right after decomposition (no fine-tuning)."""
    fm_dir = args.work_dir / "fmnist"
    dense = trained_dense(args.dense_run)
    weights = fm_dir / "dense.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dense.state_dict(), weights)
    row, planner = compare(
        "resnet18",
        FMNIST_SIZE,
        args.fmnist_batch,
        args.macs_reduction,
        CostCache(args.cache_dir),
        args.runs,
        args.warmup,
        model=dense,
    )
    log = lambda s: print(f"[fmnist] {s}", file=sys.stderr, flush=True)  # noqa: E731
    energy, energy16 = row["equal_macs"][0]["ranks"], row["equal_macs"][1]["ranks"]
    fraction = next(r for r in row["equal_latency"] if r["plan"] == "energy_pad16")[
        "latency_fraction"
    ]
    plans = {
        "energy_pad16": energy16,
        "latency_aware_q1": row["equal_latency"][1]["ranks"],
    }
    calibrations = {"latency_aware_q1": row["calibration"]}
    timing = dict(runs=args.runs, warmup=args.warmup, progress=log)
    log(f"latency-aware, accuracy first, calibrated to {fraction:.3f} of dense")
    la, _, calibrations["latency_aware"] = planner.calibrate(
        fraction, tolerance=TOLERANCE, min_quotient=None, **timing
    )
    plans["latency_aware"] = la.plan
    images = fmnist_sensitivity_images(dense, args.sensitivity_images)
    started = time.time()
    planner.use_sensitivity(images, progress=log)
    sensitivity_seconds = time.time() - started
    la_kl, _, calibrations["latency_aware_kl"] = planner.calibrate(
        fraction, tolerance=TOLERANCE, min_quotient=None, **timing
    )
    plans["latency_aware_kl"] = la_kl.plan
    log("all plans at equal latency, one interleaved run")
    load = [load_average()]
    stats = planner.measure(plans, runs=args.runs, warmup=args.warmup)
    load.append(load_average())
    equal = []
    for label, plan in plans.items():
        own = energy if label == "energy_pad16" else None  # padded ranks keep more
        entry = describe(planner, label, plan, stats, energy_of=own)
        entry["output_kl"] = planner.output_kl(plan)
        entry["selection"] = FMNIST_LATENCY_AWARE.get(label, "energy threshold, padded to 16")
        entry["calibration"] = calibrations.get(label)
        equal.append(entry)

    evaluator = evaluation_trainer(fm_dir / "eval")
    _, dense_top1 = evaluator.evaluate(dense)
    files, top1 = {}, {}
    for label, plan in {"energy": energy, **plans}.items():
        path = fm_dir / f"{label}_plan.json"
        write_json(path, {"plan": plan, "scheme": SCHEME, "source": "benchmarks/rank_selection.py"})
        files[label] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        _, top1[label] = evaluator.evaluate(decompose(dense, SCHEME, rank=plan))
    result["fmnist"] = {
        "dense_run": str(args.dense_run),
        "dense_top1": round(dense_top1, 2),
        "plans": row,
        "equal_latency": {
            "latency_fraction_of": "energy_pad16",
            "rows": equal,
            "load_average_1min": load,
            "sensitivity": {
                "images": len(images),
                "source": "Fashion-MNIST train split (first images), no labels used",
                "seconds": round(sensitivity_seconds, 1),
            },
        },
        "plan_files": files,
        "top1_no_finetune": {k: round(v, 2) for k, v in top1.items()},
    }


def stage_fmnist_train(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Fine-tune the dense model with the recipe, TRP capped at each plan's ranks."""
    fm = result.get("fmnist")
    if not fm or "equal_latency" not in fm:
        raise SystemExit("run the fmnist-plans stage first")
    weights = args.work_dir / "fmnist" / "dense.pth"
    common = ["--epochs", str(args.epochs), "--energy", "1.0", "--seed", str(args.seed)]
    common += ["--lr", str(args.finetune_lr), "--warmup-epochs", "0", "--pretrained", str(weights)]
    common += ["--model-name", "none", "--no-progress", "--scheme", SCHEME]
    trained = fm.setdefault("training", {})
    rows = {r["plan"]: r for r in fm["equal_latency"]["rows"]}
    for label in args.train_plans or list(rows):
        plan_file = ROOT / fm["plan_files"][label]
        run = f"{label}_ft{args.epochs}_lr{args.finetune_lr}_seed{args.seed}"
        out = train_row(run, args.work_dir / "fmnist", common, ["--rank-plan", str(plan_file)])
        low = out.get("decomposed") or {}
        trained[run] = {
            "plan": label,
            "plan_kept_energy": rows[label]["mean_kept_energy"] if label in rows else None,
            "latency_fraction": rows[label]["latency_fraction"] if label in rows else None,
            "epochs": args.epochs,
            "lr": args.finetune_lr,
            "seed": args.seed,
            "top1_no_finetune": fm["top1_no_finetune"][label],
            "top1_decomposed": low.get("top1"),
            "top1_before_decomposition": out["dense"]["top1"],
            "macs_reduction": low.get("macs_reduction"),
            "rank_plan_matches": low.get("rank_plan") == json.loads(plan_file.read_text())["plan"],
            "training_seconds": round(out["training"]["seconds"]),
        }
        save_results(args.output, result)


# ----------------------------------------------------------------------------- report


def _plan_rows(entries: list[dict[str, Any]]) -> list[str]:
    return [
        f"| {e['plan']} | {e['factorized_layers']} | {e['macs_reduction']:.2f}x | "
        f"{e['mean_kept_energy']:.3f} | {e['dense_p50_ms']:.1f} | {e['p50_ms']:.1f} | "
        f"{e['speedup']:.2f}x | **{e['quotient']:.2f}** | "
        + (
            f"{e['predicted_latency_fraction']:.3f} / "
            if e["predicted_latency_fraction"]
            else "- / "
        )
        + f"{e['latency_fraction']:.3f} |"
        for e in entries
    ]


HEADER = [
    "| plan | factorized layers | MACs reduction | mean kept energy | dense p50 ms | plan p50 ms "
    "| speed-up | speed-up / MACs reduction | latency fraction predicted / measured |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def _section(row: dict[str, Any]) -> list[str]:
    c, h, w = row["input_size"]
    lines = [
        f"### {row['arch']}, {c}x{h}x{w}, batch {row['batch']}",
        "",
        f"Energy threshold {row['energy_threshold']} (MACs target); cost table: "
        f"{row['cost_table']['layers']} layers, {row['cost_table']['probes_timed']} probes timed, "
        f"{row['cost_table']['probes_from_cache']} from the cache; load average "
        f"{row['load_average_1min']}.",
        "",
        "Equal MACs (one interleaved run):",
        "",
        *HEADER,
        *_plan_rows(row["equal_macs"]),
        "",
        f"Equal measured latency (one interleaved run, after "
        f"{row['equal_latency_attempts']} calibration attempt(s): budget / predicted / measured "
        + ", ".join(
            f"{c['budget']:.3f} / {c['predicted']:.3f} / {c['measured']:.3f}"
            for c in row.get("calibration", [])
        )
        + "):",
        "",
        *HEADER,
        *_plan_rows(row["equal_latency"]),
        "",
    ]
    return lines


def _fmnist_markdown(fm: dict[str, Any]) -> list[str]:
    row = fm["plans"]
    lines = [
        "## Fashion-MNIST: accuracy at equal measured latency",
        "",
        f"Plans chosen from the trained dense resnet18 ({fm['dense_run']}, test top-1 "
        f"{fm['dense_top1']:.2f}%), timed at 1x28x28, batch {row['batch']}. Energy threshold "
        f"{row['energy_threshold']} (MACs target); load average {row['load_average_1min']}.",
        "",
        "Equal MACs (one interleaved run):",
        "",
        *HEADER,
        *_plan_rows(row["equal_macs"]),
        "",
    ]
    if fm.get("equal_latency"):
        lines += _equal_latency_markdown(fm["equal_latency"], fm["top1_no_finetune"])
    if fm.get("training"):
        lines += _fine_tuned_markdown(fm["training"])
    return lines


def _equal_latency_markdown(eq: dict[str, Any], top1: dict[str, float]) -> list[str]:
    sens = eq["sensitivity"]
    lines = [
        "Equal measured latency: each latency-aware plan calibrated to the padded energy "
        "plan's measured latency fraction, then all timed in one interleaved run (load "
        f"average {eq['load_average_1min']}). Sensitivity: {sens['images']} images of the "
        f"{sens['source']}, {sens['seconds']:.0f} s.",
        "",
        "| plan | selection | factorized layers | MACs reduction | plan p50 ms | latency "
        "fraction | speed-up / MACs reduction | summed output KL | top-1 no fine-tuning (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in eq["rows"]:
        kl = "-" if e["output_kl"] is None else f"{e['output_kl']:.4f}"
        lines.append(
            f"| {e['plan']} | {e['selection']} | {e['factorized_layers']} | "
            f"{e['macs_reduction']:.2f}x | {e['p50_ms']:.2f} | {e['latency_fraction']:.3f} | "
            f"{e['quotient']:.2f} | {kl} | {top1[e['plan']]:.2f} |"
        )
    attempts = "; ".join(
        f"{e['plan']}: "
        + ", ".join(
            f"{c['budget']:.3f} / {c['predicted']:.3f} / {c['measured']:.3f}"
            for c in e["calibration"]
        )
        for e in eq["rows"]
        if e.get("calibration")
    )
    return [
        *lines,
        "",
        f"Calibration (budget / predicted / measured fraction per attempt): {attempts}.",
        "",
    ]


def _fine_tuned_markdown(runs: dict[str, Any]) -> list[str]:
    lines = [
        "Fine-tuned from the dense weights with the recipe (`--pretrained`, "
        "`--rank-plan`, `--energy 1.0`: TRP projects onto exactly the planned ranks):",
        "",
        "| plan | latency fraction | epochs | lr | seed | top-1 no fine-tuning (%) | top-1 "
        "fine-tuned, decomposed (%) | MACs reduction | decomposed at the planned ranks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs.values():
        frac = "-" if r.get("latency_fraction") is None else f"{r['latency_fraction']:.3f}"
        lines.append(
            f"| {r['plan']} | {frac} | {r['epochs']} | {r['lr']} | {r['seed']} | "
            f"{r['top1_no_finetune']:.2f} | {r['top1_decomposed']:.2f} | "
            f"{r['macs_reduction']:.2f}x | {r['rank_plan_matches']} |"
        )
    lines.append("")
    by_plan: dict[str, list[float]] = {}
    for r in runs.values():
        by_plan.setdefault(r["plan"], []).append(r["top1_decomposed"])
    if "energy_pad16" not in by_plan:
        return lines
    base = sum(by_plan["energy_pad16"]) / len(by_plan["energy_pad16"])
    for label in FMNIST_LATENCY_AWARE:
        if label in by_plan:
            mine = sum(by_plan[label]) / len(by_plan[label])
            met = "met" if mine >= base else "not met"
            seeds = f"mean of {len(by_plan[label])} seeds: " if len(by_plan[label]) > 1 else ""
            lines.append(
                f"- {label} ({FMNIST_LATENCY_AWARE[label]}): {seeds}{mine:.2f}% vs "
                f"the energy plan's {base:.2f}% at equal measured latency ({met})."
            )
    lines.append("")
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Rank selection: energy threshold vs latency-aware", ""]
    lat = result.get("latency")
    if lat:
        lines += [f"MACs target of the energy plans: {lat['macs_reduction_target']}x fewer.", ""]
        for row in lat["rows"]:
            lines += _section(row)
    if "goal" in result:
        g = result["goal"]
        lines += [
            f"Goal: {g['description']}: measured {g['measured']:.2f} "
            f"({'met' if g['met'] else 'not met'}).",
            "",
        ]
    if result.get("fmnist"):
        lines += _fmnist_markdown(result["fmnist"])
    for note in result.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=("latency", "fmnist-plans", "fmnist-train"))
    parser.add_argument("--archs", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--macs-reduction", type=float, default=2.2)
    parser.add_argument("--fmnist-batch", type=int, default=8)
    parser.add_argument(
        "--dense-run", type=Path, default=ROOT / "runs/fashion_mnist_table/dense_ep5"
    )
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument(
        "--train-plans",
        nargs="+",
        default=None,
        help="plans to fine-tune (default: all of the equal-latency comparison)",
    )
    parser.add_argument(
        "--sensitivity-images",
        type=int,
        default=512,
        help="Fashion-MNIST training images for the sensitivity-priced plan",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = read_results(args.output)
    {
        "latency": stage_latency,
        "fmnist-plans": stage_fmnist_plans,
        "fmnist-train": stage_fmnist_train,
    }[args.stage](args, result)
    save_results(args.output, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
