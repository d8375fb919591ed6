"""Energy-threshold vs latency-aware rank plans: speed, MACs and accuracy, measured.

Two ways to pick per-layer ranks for the channel scheme:

- *energy threshold* (TRP's own criterion): every layer keeps the smallest rank holding a
  fraction ``e`` of its squared singular values; ``e`` is bisected so the MACs drop
  ``--macs-reduction`` times (2.2x by default). Shown as is and with its ranks padded to
  multiples of 16 (what ``python -m runtime.build_engine`` deploys by default; same
  function, so same accuracy);
- *latency-aware* (``runtime.planner``): per-layer cost tables measured on the target,
  ranks chosen from the measured multiples to keep the most energy within a budget.

Stages (each updates its part of ``benchmarks/results/rank_selection.{json,md}``):

    python benchmarks/rank_selection.py latency         # resnet50 + resnet18, 224x224
    python benchmarks/rank_selection.py fmnist-plans    # resnet18, 1x28x28: both plans
    python benchmarks/rank_selection.py fmnist-train --epochs 3   # trains both plans

``latency``: for each model and batch size, round 1 times dense, the energy plan (raw and
padded) and the latency-aware plan with the energy plan's MACs (``--macs`` budget), all
interleaved in one process; round 2 times the latency-aware plan whose latency budget is
the faster energy variant's measured latency fraction, next to that variant (one
correction step when the measured fractions differ by more than 3%). Reported: speed-up
(ratio of median latencies), MACs reduction and their quotient, and the mean kept energy.

``fmnist-plans`` does the same at 1x28x28 for the Fashion-MNIST resnet18 and writes both
plans as rank-plan files; ``fmnist-train`` trains each with ``recipes/
fashion_mnist_resnet18.py --rank-plan FILE --energy 1.0`` (the projection keeps exactly the
planned ranks, so the decomposed model has the plan's latency) for the same epochs.

Weights are random (timm's init, seed 0) for the latency stages: their spectra are nearly
flat, so kept energy there measures how much of each layer's dimensions survive, not
learned importance. ONNX Runtime on CPU, one intra-op thread, spinning off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import timm
import torch

from runtime.costs import CostCache, Target
from runtime.io import atomic_write_text
from runtime.planner import Planner
from runtime.rank_plans import padded_plan
from runtime.report import environment
from trp_zoo.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rank_selection.json"
WORK = ROOT / "runs" / "rank_selection"
SCHEME = "channel"
GOAL_ARCH, GOAL_BATCH, GOAL_QUOTIENT = "resnet50", 8, 1.0
TOLERANCE = 0.03  # equal latency: measured fractions within 3%


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def energy_for_macs(planner: Planner, fraction: float) -> tuple[float, dict[str, int]]:
    """The energy threshold whose plan has the largest MACs at or below ``fraction``."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if planner.macs(planner.energy_plan(mid)) <= fraction * planner.dense_macs:
            lo = mid
        else:
            hi = mid
    return lo, planner.energy_plan(lo)


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
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Energy vs latency-aware plans for one model and batch size (see the module doc)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, in_chans=input_size[0], **model_kwargs).eval()
    target = Target(batch_size=batch, input_size=input_size, threads=1)
    log = lambda s: print(f"[{arch} b{batch}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    planner = Planner(model, target, SCHEME, cache=cache, runs=runs, warmup=warmup, progress=log)
    table_seconds = time.time() - started
    threshold, energy = energy_for_macs(planner, 1.0 / macs_reduction)
    geoms = {n: lc.probe.geom for n, lc in planner.table.layers.items()}
    energy16 = padded_plan(energy, geoms, SCHEME, 16)
    la_macs = planner.select(macs=planner.macs(energy) / planner.dense_macs)
    plans = {"energy": energy, "energy_pad16": energy16, "latency_aware_equal_macs": la_macs.plan}
    log("round 1: dense, energy, energy padded, latency-aware at equal MACs")
    load = [_load_average()]
    stats = planner.measure(plans, runs=runs, warmup=warmup)
    load.append(_load_average())
    round1 = [
        describe(planner, "energy", energy, stats),
        describe(planner, "energy_pad16", energy16, stats, energy_of=energy),
        describe(planner, "latency_aware_equal_macs", la_macs.plan, stats),
    ]
    best = min(round1[:2], key=lambda r: r["latency_fraction"])
    fraction = best["latency_fraction"]
    attempts = []
    for _ in range(2):
        la = planner.select(latency=min(fraction, 1.0))
        log(f"round 2: latency-aware at latency fraction {fraction:.3f} vs {best['plan']}")
        pair_plans = {best["plan"]: plans[best["plan"]], "latency_aware_equal_latency": la.plan}
        stats = planner.measure(pair_plans, runs=runs, warmup=warmup)
        load.append(_load_average())
        pair = [
            describe(planner, best["plan"], plans[best["plan"]], stats, energy_of=energy),
            describe(planner, "latency_aware_equal_latency", la.plan, stats),
        ]
        pair[1]["latency_budget"] = round(fraction, 4)
        attempts.append(pair)
        ratio = pair[1]["latency_fraction"] / pair[0]["latency_fraction"]
        if abs(ratio - 1.0) <= TOLERANCE:
            break
        fraction = fraction / ratio  # one correction by the measured miss
    return {
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
        "equal_latency": attempts[-1],
        "equal_latency_attempts": len(attempts),
        "own_ranks_kept_energy": {  # each plan's own truncation (padded ranks keep more)
            "energy": round(planner.mean_energy(energy), 4),
            "energy_pad16": round(planner.mean_energy(energy16), 4),
            "latency_aware_equal_macs": round(la_macs.mean_energy, 4),
            "latency_aware_equal_latency": round(la.mean_energy, 4),
        },
        "load_average_1min": load,
    }


# ----------------------------------------------------------------------------- stages


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, result: dict[str, Any]) -> None:
    result["environment"] = environment()
    result["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(path, result)
    atomic_write_text(path.with_suffix(".md"), markdown(result))


def stage_latency(args: argparse.Namespace, result: dict[str, Any]) -> None:
    rows = []
    for arch in args.archs:
        for batch in args.batches:
            rows.append(
                compare(
                    arch,
                    (3, 224, 224),
                    batch,
                    args.macs_reduction,
                    CostCache(args.cache_dir),
                    args.runs,
                    args.warmup,
                )
            )
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


def stage_fmnist_plans(args: argparse.Namespace, result: dict[str, Any]) -> None:
    row = compare(
        "resnet18",
        FMNIST_SIZE,
        args.fmnist_batch,
        args.macs_reduction,
        CostCache(args.cache_dir),
        args.runs,
        args.warmup,
        num_classes=10,
    )
    plans = {
        "energy": row["equal_macs"][0]["ranks"],
        "energy_pad16": row["equal_macs"][1]["ranks"],
        "latency_aware": row["equal_latency"][1]["ranks"],
    }
    files = {}
    for label, plan in plans.items():
        path = args.work_dir / "fmnist" / f"{label}_plan.json"
        write_json(path, {"plan": plan, "scheme": SCHEME, "source": "benchmarks/rank_selection.py"})
        files[label] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    result["fmnist"] = {"plans": row, "plan_files": files}


def stage_fmnist_train(args: argparse.Namespace, result: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fashion_mnist_table import train_row  # the recipe in-process, resumable

    fm = result.get("fmnist")
    if not fm:
        raise SystemExit("run the fmnist-plans stage first")
    common = ["--epochs", str(args.epochs), "--energy", "1.0", "--seed", str(args.seed)]
    common += ["--model-name", "none", "--no-progress", "--scheme", SCHEME]
    trained = fm.setdefault("training", {})
    own = fm["plans"]["own_ranks_kept_energy"]
    energy_at_init = {
        "energy": own["energy"],
        "energy_pad16": own["energy_pad16"],
        "latency_aware": own["latency_aware_equal_latency"],
    }
    for label, plan_file in fm["plan_files"].items():
        run = f"{label}_ep{args.epochs}_seed{args.seed}"
        out = train_row(
            run, args.work_dir / "fmnist", common, ["--rank-plan", str(ROOT / plan_file)]
        )
        low = out.get("decomposed") or {}
        trained[run] = {
            "plan": label,
            "plan_kept_energy_at_init": energy_at_init[label],
            "epochs": args.epochs,
            "seed": args.seed,
            "top1_decomposed": low.get("top1"),
            "top1_before_decomposition": out["dense"]["top1"],
            "macs_reduction": low.get("macs_reduction"),
            "rank_plan_matches": low.get("rank_plan")
            == json.loads((ROOT / plan_file).read_text())["plan"],
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
        f"Equal measured latency (one interleaved run, "
        f"{row['equal_latency_attempts']} attempt(s)):",
        "",
        *HEADER,
        *_plan_rows(row["equal_latency"]),
        "",
    ]
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
    fm = result.get("fmnist")
    if fm:
        lines += ["## Fashion-MNIST: accuracy at equal measured latency", ""]
        lines += _section(fm["plans"])
        runs = fm.get("training", {})
        if runs:
            lines += [
                "| run | plan | epochs | seed | top-1 decomposed (%) | top-1 before "
                "decomposition (%) | MACs reduction | decomposed at the planned ranks |",
                "|---|---|---:|---:|---:|---:|---:|---|",
            ]
            for name, r in runs.items():
                lines.append(
                    f"| {name} | {r['plan']} | {r['epochs']} | {r['seed']} | "
                    f"{r['top1_decomposed']:.2f} | {r['top1_before_decomposition']:.2f} | "
                    f"{r['macs_reduction']:.2f}x | {r['rank_plan_matches']} |"
                )
            lines.append("")
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
    parser.add_argument("--epochs", type=int, default=3)
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
