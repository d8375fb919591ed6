"""Realized speed-up of factorized vs dense engines, next to the MACs reduction.

timm resnet50 and resnet18, and the Linear-heavy deit_tiny_patch16_224,
vit_small_patch16_224 and convnext_tiny (random weights: speed does not depend on weight
values) at 3x224x224, batch 1 and 8. Two kinds of rank plan:

- ``aligned``: ``trp_zoo.algorithms.rank_alignment.aligned_rank_plan``: ranks are
  multiples of 16 (the channel block of ONNX Runtime's NCHWc layout with AVX-512, and a
  tensor-core friendly size), chosen so the MACs drop by the row's target; layers whose
  own MACs would drop less than 1.25x stay dense. One row repeats resnet50/channel with
  unrounded ranks at the same target, to show what alignment is worth.
- ``latency``: ``runtime.planner.Planner`` on per-layer cost tables measured on this
  target (ONNX Runtime, batch 8, one thread; ranks multiples of 16) for the row's latency
  fraction of the dense model: the plan that keeps the most spectral energy within it.

Every targeted layer is a candidate (convs and Linears but the stem and the classifier).
The dense engine is ``trp_zoo.densify`` of the factorized model (same function). Both go
through ``runtime``'s export and engine build, and are timed interleaved in one process
(``runtime.latency.measure_interleaved``): the result is the ratio of median latencies,
divided by the MACs ratio.

    python benchmarks/runtime_speedup.py                    # about 30 minutes on 2 CPU cores
    python benchmarks/runtime_speedup.py --archs vit_small_patch16_224   # redo some, keep others
    python benchmarks/runtime_speedup.py --render-only      # time nothing: the .md from the .json

Writes benchmarks/results/runtime_speedup.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import trp_zoo
from runtime.backends import get_backend
from runtime.build import build
from runtime.latency import measure_interleaved
from runtime.planner import Planner
from runtime.report import environment, load_average
from runtime.target import Target
from trp_zoo.algorithms.rank_alignment import aligned_rank_plan
from trp_zoo.fileio import write_json, write_text

RESULTS = Path(__file__).parent / "results" / "runtime_speedup.json"
INPUT_SIZE = (3, 224, 224)
BATCHES = (1, 8)
GOAL_FRACTION = 0.9

PLAN_BATCH = 8  # the batch size the latency-aware plans' cost tables are measured at

# arch, scheme, plan kind, target (MACs reduction for "aligned", latency fraction for
# "latency"), rank multiple, ONNX Runtime threads, note
ROWS: list[tuple[str, str, str, float, int, int, str]] = [
    ("resnet50", "channel", "aligned", 2.2, 16, 1, ""),
    ("resnet50", "channel", "aligned", 2.2, 1, 1, "unrounded ranks, for comparison"),
    ("resnet50", "channel", "aligned", 2.2, 16, 2, "two intra-op threads"),
    (
        "resnet50",
        "spatial",
        "aligned",
        1.6,
        16,
        1,
        "spatial factorizes only the 3x3 convs (about half of ResNet-50's MACs): 2.2x is out "
        "of reach (at most 1.72x with multiple-of-16 ranks), so the target is 1.6x",
    ),
    ("resnet18", "channel", "aligned", 2.2, 16, 1, ""),
    ("resnet18", "spatial", "aligned", 2.2, 16, 1, ""),
    ("deit_tiny_patch16_224", "channel", "aligned", 2.0, 16, 1, ""),
    ("deit_tiny_patch16_224", "channel", "latency", 0.55, 16, 1, ""),
    ("deit_tiny_patch16_224", "channel", "latency", 0.65, 16, 1, ""),
    ("vit_small_patch16_224", "channel", "aligned", 2.0, 16, 1, ""),
    ("vit_small_patch16_224", "channel", "latency", 0.55, 16, 1, ""),
    ("vit_small_patch16_224", "channel", "latency", 0.65, 16, 1, ""),
    ("convnext_tiny", "channel", "aligned", 2.0, 16, 1, ""),
    ("convnext_tiny", "channel", "latency", 0.55, 16, 1, ""),
    ("convnext_tiny", "channel", "latency", 0.65, 16, 1, ""),
]


def rank_plan_for(
    model: nn.Module, scheme: str, kind: str, target: float, multiple: int, backend: str
) -> dict[str, int]:
    """The row's plan: aligned to a MACs reduction, or latency-aware for a latency fraction."""
    if kind == "aligned":
        return aligned_rank_plan(model, scheme, target, INPUT_SIZE, multiple=multiple)
    on = Target(backend=backend, batch_size=PLAN_BATCH, input_size=INPUT_SIZE, threads=1)
    planner = Planner(model, on, scheme, rank_step=multiple, progress=_progress)
    return dict(planner.select(latency=target).plan)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_row(
    arch: str,
    scheme: str,
    kind: str,
    target: float,
    multiple: int,
    threads: int,
    workdir: Path,
    backend_name: str,
    warmup: int,
    runs: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = timm.create_model(arch).eval()
    plan = rank_plan_for(model, scheme, kind, target, multiple, backend_name)
    factorized = trp_zoo.decompose(model, scheme, rank=plan, method="gram").eval()
    dense = trp_zoo.densify(factorized).eval()
    cost = trp_zoo.compare_cost(dense, factorized, INPUT_SIZE)
    backend = get_backend(backend_name, spinning=False)
    engines = {
        name: build(
            m,
            workdir / f"{arch}-{scheme}-{multiple}-{name}{backend.engine_suffix}",
            backend=backend.name,
            batch_sizes=BATCHES,
            input_size=INPUT_SIZE,
            threads=threads,
            spinning=False,
        )
        for name, m in (("dense", dense), ("factorized", factorized))
    }
    load_before = load_average()
    try:
        timings = measure_interleaved(engines, BATCHES, warmup=warmup, runs=runs, progress=True)
    finally:
        for engine in engines.values():
            engine.close()
    batches = []
    for batch, stats in timings.items():
        d, f = stats["dense"], stats["factorized"]
        speedup = d.p50_ms / f.p50_ms
        batches.append(
            {
                "batch": batch,
                "dense_p50_ms": round(d.p50_ms, 2),
                "factorized_p50_ms": round(f.p50_ms, 2),
                "dense_p90_ms": round(d.p90_ms, 2),
                "factorized_p90_ms": round(f.p90_ms, 2),
                "speedup": round(speedup, 3),
                "macs_reduction": round(cost.macs_reduction, 3),
                "realized_fraction": round(speedup / cost.macs_reduction, 3),
            }
        )
    layer_kinds = {type(m).__name__ for n, m in factorized.named_modules() if n in plan}
    return {
        "arch": arch,
        "scheme": scheme,
        "plan": kind,
        "target": target,
        "multiple": multiple,
        "threads": threads,
        "backend": f"{backend.name} {backend.version()} ({backend.device()})",
        "dense_macs": cost.dense_macs,
        "factorized_macs": cost.factorized_macs,
        "macs_reduction": round(cost.macs_reduction, 3),
        "factorized_layers": len(plan),
        "factorized_layer_types": sorted(layer_kinds),
        "distinct_ranks": sorted(set(plan.values())),
        "load_average_1min": [load_before, load_average()],
        "batches": batches,
    }


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row across runs (older results have no plan kind: aligned)."""
    target = row.get("target", row.get("target_macs_reduction"))
    return (
        row["arch"],
        row["scheme"],
        row.get("plan", "aligned"),
        target,
        row["multiple"],
        row["threads"],
    )


def plan_label(row: dict[str, Any]) -> str:
    """The row's plan as the table shows it: ``aligned 2.2x MACs``, ``latency 0.65 of dense
    latency``."""
    plan = row.get("plan", "aligned")
    target = row.get("target", row.get("target_macs_reduction"))
    return f"{plan} {target}x MACs" if plan == "aligned" else f"{plan} {target} of dense latency"


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | scheme | plan | rank multiple | threads | batch | MACs reduction | "
        "dense p50 ms | factorized p50 ms | speed-up | speed-up / MACs reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        plan = plan_label(row)
        if row.get("error"):
            lines.append(
                f"| {row['arch']} | {row['scheme']} | {plan} | {row['multiple']} | "
                f"{row['threads']} | - | no plan: {row['error']} | | | | |"
            )
        for b in row["batches"]:
            lines.append(
                f"| {row['arch']} | {row['scheme']} | {plan} | {row['multiple']} | "
                f"{row['threads']} | "
                f"{b['batch']} | {b['macs_reduction']:.2f}x | {b['dense_p50_ms']:.1f} | "
                f"{b['factorized_p50_ms']:.1f} | {b['speedup']:.2f}x | "
                f"{b['realized_fraction']:.2f} |"
            )
    lines.append("")
    for goal in result["goals"]:
        if goal["measured"] is None:
            lines.append(f"Goal: {goal['description']}: not measured, {goal['unmeasured']}.")
        else:
            lines.append(
                f"Goal: {goal['description']}: measured {goal['measured']:.2f} "
                f"({'met' if goal['met'] else 'not met'})."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", default="onnxruntime", choices=("auto", "onnxruntime", "tensorrt")
    )
    archs = sorted({r[0] for r in ROWS})
    parser.add_argument("--archs", help=f"comma-separated subset of {', '.join(archs)}")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="time nothing: recompute the goals from --output's rows and rewrite its .md",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        render_only(args.output)
        return
    chosen = args.archs.split(",") if args.archs else archs
    unknown = sorted(set(chosen) - set(archs))
    if unknown:
        parser.error(f"unknown --archs {unknown[0]!r}; choose from {', '.join(archs)}")
    previous = json.loads(args.output.read_text()).get("rows", []) if args.output.is_file() else []
    measured: dict[tuple[Any, ...], dict[str, Any]] = {row_key(r): r for r in previous}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, scheme, kind, target, multiple, threads, note in ROWS:
            if arch not in chosen:
                continue
            print(
                f"{arch} {scheme} {kind} {target}, multiple {multiple}, {threads} threads",
                file=sys.stderr,
            )
            try:
                row = measure_row(
                    arch,
                    scheme,
                    kind,
                    target,
                    multiple,
                    threads,
                    Path(tmp),
                    args.backend,
                    args.warmup,
                    args.runs,
                )
            except ValueError as err:  # a latency budget out of reach on this machine
                row = {
                    "arch": arch,
                    "scheme": scheme,
                    "plan": kind,
                    "target": target,
                    "multiple": multiple,
                    "threads": threads,
                    "batches": [],
                    "error": str(err),
                }
            row["note"] = note
            row["command"] = f"python benchmarks/runtime_speedup.py --archs {arch}"
            measured[row_key(row)] = row
            print(to_markdown({"rows": [row], "goals": []}), file=sys.stderr)
    order = [
        row_key({"arch": a, "scheme": s, "plan": k, "target": t, "multiple": m, "threads": th})
        for a, s, k, t, m, th, _ in ROWS
    ]
    rows = [measured[k] for k in order if k in measured]
    result = {
        "command": "python benchmarks/runtime_speedup.py"
        + (f" --backend {args.backend}" if args.backend != "onnxruntime" else ""),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input_size": list(INPUT_SIZE),
        "weights": "random (timm default init, seed 0); speed does not depend on weight values",
        "rank_plan": (
            "aligned: trp_zoo.algorithms.rank_alignment.aligned_rank_plan: every targeted layer "
            "(convs and Linears but the stem and the classifier; 3x3 convs only for spatial) "
            "gets rank alpha * full rank rounded to a multiple of the row's 'multiple' (at "
            "least one multiple), with the largest alpha whose plan cuts MACs by the target; "
            "layers whose own MACs would drop less than 1.25x stay dense; then ranks are "
            "raised a step at a time, cheapest first, while the target still holds. latency: "
            f"runtime.planner.Planner on cost tables measured at batch {PLAN_BATCH}, one "
            "thread, ranks multiples of 'multiple', for the row's fraction of the dense "
            "latency. Weights factorized by truncated SVD (trp_zoo.decompose); the dense "
            "engine runs trp_zoo.densify of the factorized model."
        ),
        "timing": (
            f"{args.warmup} warm-up runs, then {args.runs} timed runs per engine and batch, "
            "dense and factorized interleaved (order alternating each round) in one process; "
            "ONNX Runtime with full graph optimizations, the given intra-op threads, one "
            "inter-op thread, thread spinning off (the machine is shared); speed-up = ratio "
            "of median latencies. Each row records the 1-minute load average before and "
            "after its timing, and the command that measured it."
        ),
        "environment": environment(),
        "rows": rows,
        "goals": goals(rows),
    }
    write_json(args.output, result)
    write_text(args.output.with_suffix(".md"), to_markdown(result))
    print(to_markdown(result))


GOALS = [
    # (label, arch, scheme, plan, multiple, threads, batch): every row of that plan kind
    # (each of its targets) is a goal
    ("resnet50 channel", "resnet50", "channel", "aligned", 16, 1, 8),
    ("deit_tiny", "deit_tiny_patch16_224", "channel", "latency", 16, 1, 8),
    ("vit_small", "vit_small_patch16_224", "channel", "latency", 16, 1, 8),
    ("convnext_tiny", "convnext_tiny", "channel", "latency", 16, 1, 8),
]


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal row at its batch realizes at least GOAL_FRACTION of its MACs reduction.

    Every row a goal matches is listed, in row order (a model's latency plans at 0.55 and
    0.65 are two goals); a row with no plan (its budget out of reach) is listed as not
    measured, with the reason, instead of hiding the rows after it.
    """
    out: list[dict[str, Any]] = []
    for label, arch, scheme, kind, multiple, threads, batch in GOALS:
        for row in rows:
            if (
                row["arch"],
                row["scheme"],
                row.get("plan", "aligned"),
                row["multiple"],
                row["threads"],
            ) != (arch, scheme, kind, multiple, threads):
                continue
            description = (
                f"{label} ({plan_label(row)}) at batch {batch} realizes at least "
                f"{GOAL_FRACTION} of its MACs reduction as speed-up"
            )
            value = next(
                (b["realized_fraction"] for b in row["batches"] if b["batch"] == batch), None
            )
            if value is None:
                reason = (
                    "no plan: its budget is out of reach on this machine (see its row)"
                    if row.get("error")
                    else f"the row has no batch {batch}"
                )
                out.append(
                    {
                        "description": description,
                        "measured": None,
                        "met": None,
                        "unmeasured": reason,
                    }
                )
                continue
            out.append(
                {
                    "description": description,
                    "measured": value,
                    "met": bool(value >= GOAL_FRACTION),
                }
            )
    return out


def render_only(path: Path) -> None:
    """Rebuild the goals and the markdown from the results JSON at ``path``; nothing is
    timed, the rows and every recorded number stay as they are."""
    if not path.is_file():
        raise SystemExit(f"error: --render-only needs the results {path}; run the benchmark first")
    result = json.loads(path.read_text())
    result["goals"] = goals(result["rows"])
    write_json(path, result)
    write_text(path.with_suffix(".md"), to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
