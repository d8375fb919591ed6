"""Low rank and INT8 stacked: dense fp32, dense int8, low-rank fp32 and low-rank int8 engines.

- ``resnet18_trp_ch_fmnist`` (the Fashion-MNIST zoo model, 1x28x28): top-1 of each engine on
  the whole test split, latency at batch 1 and 32; int8 calibrated on 512 images of the
  *training* split.
- timm ``resnet18`` and ``resnet50`` at 3x224x224 (random weights: speed does not depend on
  weight values; calibrated on random inputs, so no accuracy is reported): a channel plan
  from ``trp_zoo.algorithms.rank_alignment.aligned_rank_plan`` cutting MACs 3x with ranks rounded to
  multiples of 16, latency at batch 1 and 8.

Every engine goes through ``runtime``'s build (``runtime.quantize`` for int8: QDQ, per-channel
int8 weights, uint8 activations, minmax calibration); the low-rank model's ranks are padded
to multiples of 16 like ``python -m runtime.build_engine`` does, and the dense model is
``trp_zoo.densify`` of it (same function). The four engines of a model are timed
interleaved in one process on ONNX Runtime CPU with the stated threads; speed-ups are
ratios of median latencies. Also draws top-1 against latency with the Pareto front.

    python benchmarks/int8_stack.py                      # about 15 minutes on 2 CPU cores
    python benchmarks/int8_stack.py --models resnet50    # redo some models, keep the others

Writes benchmarks/results/int8_stack.json, .md and .png.
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
from torch import nn

import trp_zoo
from runtime.backends import get_backend
from runtime.build import build
from runtime.checks import check_agreement
from runtime.data import resolve_calibration_data, resolve_eval_data
from runtime.engine import Engine
from runtime.export import export_onnx
from runtime.latency import measure_interleaved
from runtime.quantize import Calibration, calibration_from_data, random_calibration
from runtime.report import environment, load_average
from runtime.sources import load_source
from trp_zoo.algorithms.rank_alignment import aligned_rank_plan, pad_ranks
from trp_zoo.fileio import write_json, write_text

RESULTS = Path(__file__).parent / "results" / "int8_stack.json"
ZOO_MODEL = "resnet18_trp_ch_fmnist"
BATCHES = {ZOO_MODEL: (1, 32), "resnet18": (1, 8), "resnet50": (1, 8)}
MODELS = tuple(BATCHES)
PLAN_TARGET = 3.0  # MACs reduction of the timm models' channel plans
ENGINES = (("dense", "fp32"), ("dense", "int8"), ("low-rank", "fp32"), ("low-rank", "int8"))
CALIBRATION_IMAGES = 512
MULTIPLE = 16


def _models(
    name: str, zoo_source: str
) -> tuple[dict[str, nn.Module], tuple[int, int, int], dict[str, Any]]:
    """The low-rank model and its dense counterpart, the input size, and facts to report."""
    if name == ZOO_MODEL:
        model, info = load_source(zoo_source)
        size = tuple(info["pretrained_cfg"]["input_size"])
        facts = {
            "weights": f"zoo model {zoo_source}",
            "card": info.get("metrics") or {},
            "info": info,
        }
    else:
        size = (3, 224, 224)
        base = timm.create_model(name).eval()
        plan = aligned_rank_plan(base, "channel", PLAN_TARGET, size, multiple=MULTIPLE)
        model = trp_zoo.decompose(base, "channel", rank=plan, method="gram")
        facts = {"weights": "random (timm default init)", "plan_target": PLAN_TARGET}
    low = pad_ranks(model.eval(), MULTIPLE).eval()
    return {"dense": trp_zoo.densify(low).eval(), "low-rank": low}, size, facts  # type: ignore[return-value]


def _calibration(name: str, size: tuple[int, int, int], facts: dict[str, Any]) -> Calibration:
    if name != ZOO_MODEL:
        return random_calibration(size, 32)
    cfg = facts["info"]["pretrained_cfg"]
    data = resolve_calibration_data(
        "fashion-mnist", input_size=size, data_config=cfg, max_images=CALIBRATION_IMAGES
    )
    return calibration_from_data(data)


def measure(
    name: str, workdir: Path, threads: int, warmup: int, runs: int, zoo_source: str = ZOO_MODEL
) -> dict[str, Any]:
    models, size, facts = _models(name, zoo_source)
    cost = trp_zoo.compare_cost(models["dense"], models["low-rank"], size)
    calibration = _calibration(name, size, facts)
    backend = get_backend("onnxruntime", spinning=False)
    batches = BATCHES[name]
    engines: dict[str, Engine] = {}
    for variant, precision in ENGINES:
        tag = f"{name}-{variant}"
        # one export per variant: its int8 engine reuses the file its fp32 engine was built from
        exported = export_onnx(models[variant], workdir / f"{tag}.onnx", size)
        engines[f"{variant} {precision}"] = build(
            exported.path,
            workdir / f"{tag}_{precision}{backend.engine_suffix}",
            backend=backend.name,
            precision=precision,
            batch_sizes=batches,
            threads=threads,
            spinning=False,
            calibration=calibration if precision == "int8" else None,
        )
    accuracy = {}
    try:
        if name == ZOO_MODEL:
            cfg = facts["info"]["pretrained_cfg"]
            test = resolve_eval_data("fashion-mnist", input_size=size, data_config=cfg)
            for label, engine in engines.items():
                model = models[label.split()[0]]
                accuracy[label] = check_agreement(engine, model, test, batch_size=256).to_dict()
        load_before = load_average()
        timings = measure_interleaved(
            engines, batches, warmup=warmup, runs=runs, progress=sys.stderr.isatty()
        )
    finally:
        for engine in engines.values():
            engine.close()
    rows = []
    for label in engines:
        variant, precision = label.split()
        row: dict[str, Any] = {
            "engine": label,
            "variant": variant,
            "precision": precision,
            "macs": cost.dense_macs if variant == "dense" else cost.factorized_macs,
        }
        if label in accuracy:
            acc = accuracy[label]
            row.update(
                top1=round(acc["engine_top1"], 2),
                torch_fp32_top1=round(acc["torch_top1"], 2),
                top1_agreement=round(acc["top1_agreement"], 4),
            )
        for batch, stats in timings.items():
            p50 = stats[label].p50_ms
            row[f"p50_ms_b{batch}"] = round(p50, 3)
            row[f"speedup_b{batch}"] = round(stats["dense fp32"].p50_ms / p50, 3)
            row[f"speedup_vs_dense_same_precision_b{batch}"] = round(
                stats[f"dense {precision}"].p50_ms / p50, 3
            )
        rows.append(row)
    facts.pop("info", None)
    return {
        "model": name,
        "input_size": list(size),
        **facts,
        "macs_reduction": round(cost.macs_reduction, 3),
        "batches": list(batches),
        "threads": threads,
        "calibration": calibration.record({}),
        "load_average_1min": [load_before, load_average()],
        "rows": rows,
    }


def goals(models: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    zoo = models.get(ZOO_MODEL)
    if zoo:
        rows = {r["engine"]: r for r in zoo["rows"]}
        lr8 = rows["low-rank int8"]
        drop = lr8["torch_fp32_top1"] - lr8["top1"]  # against the fp32 PyTorch low-rank model
        speed = lr8["speedup_b32"]
        out.append(
            {
                "goal": f"{ZOO_MODEL}: low-rank int8 top-1 within 0.5 point of the fp32 model's "
                "and >= 4x faster than dense fp32 at batch 32",
                "measured": f"{drop:.2f} points below, {speed:.2f}x",
                "met": bool(drop <= 0.5 and speed >= 4.0),
            }
        )
    r50 = models.get("resnet50")
    if r50:
        speed = next(r for r in r50["rows"] if r["engine"] == "low-rank int8")["speedup_b8"]
        out.append(
            {
                "goal": "resnet50: low-rank int8 >= 5x faster than dense fp32 at batch 8",
                "measured": f"{speed:.2f}x",
                "met": bool(speed >= 5.0),
            }
        )
    return out


def to_markdown(result: dict[str, Any]) -> str:
    lines = []
    for m in result["models"].values():
        b = m["batches"]
        has_top1 = "top1" in m["rows"][0]
        lines += [
            f"### {m['model']} ({'x'.join(map(str, m['input_size']))}, {m['weights']}, "
            f"{m['threads']} thread(s), MACs {m['macs_reduction']:.2f}x fewer when low rank)",
            "",
            "| engine | MACs | "
            + ("top-1 | agreement with fp32 PyTorch | " if has_top1 else "")
            + " | ".join(f"p50 ms @{x} | vs dense fp32 @{x}" for x in b)
            + " | "
            + " | ".join(f"vs dense same precision @{x}" for x in b)
            + " |",
            "|---" * (2 + (2 if has_top1 else 0) + 3 * len(b)) + "|",
        ]
        for r in m["rows"]:
            lines.append(
                f"| {r['engine']} | {r['macs'] / 1e6:.1f}M | "
                + (f"{r['top1']:.2f}% | {r['top1_agreement']:.4f} | " if has_top1 else "")
                + " | ".join(f"{r[f'p50_ms_b{x}']:.2f} | {r[f'speedup_b{x}']:.2f}x" for x in b)
                + " | "
                + " | ".join(f"{r[f'speedup_vs_dense_same_precision_b{x}']:.2f}x" for x in b)
                + " |"
            )
        lines.append("")
    for g in result["goals"]:
        lines.append(f"- Goal: {g['goal']}: {g['measured']} ({'met' if g['met'] else 'NOT met'}).")
    return "\n".join(lines) + "\n"


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (latency, top-1, label) that no other point beats on both (lower, higher)."""
    front = [
        p
        for p in points
        if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in points)
    ]
    return sorted(front)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    from trp_zoo.train.plots import save_png  # selects matplotlib's Agg backend

    zoo = result["models"].get(ZOO_MODEL)
    if not zoo:
        return
    fig, axes = plt.subplots(1, len(zoo["batches"]), figsize=(5 * len(zoo["batches"]), 4))
    for ax, batch in zip(axes, zoo["batches"], strict=True):
        points = [(r[f"p50_ms_b{batch}"], r["top1"], r["engine"]) for r in zoo["rows"]]
        for x, y, label in points:
            ax.scatter(x, y, s=40)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = pareto(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel(f"median latency at batch {batch} (ms, ONNX Runtime CPU, 1 thread)")
        ax.set_ylabel("Fashion-MNIST test top-1 (%)")
        ax.set_title(f"{ZOO_MODEL}, batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--zoo-source",
        default=ZOO_MODEL,
        help="where to load the Fashion-MNIST model from (a checkpoint directory, e.g. to try "
        "the script on a small model with --output elsewhere)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    models = dict(previous.get("models", {}))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"{name} ...", file=sys.stderr)
            models[name] = measure(
                name, Path(tmp), args.threads, args.warmup, args.runs, args.zoo_source
            )
            models[name]["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            models[name]["command"] = f"python benchmarks/int8_stack.py --models {name}"
            print(to_markdown({"models": {name: models[name]}, "goals": []}), file=sys.stderr)
    models = {n: models[n] for n in MODELS if n in models}
    result = {
        "command": "python benchmarks/int8_stack.py",
        "timing": (
            f"{args.warmup} warm-up runs, then {args.runs} timed runs per engine and batch, the "
            "four engines of a model interleaved (order rotating each round) in one process; "
            "ONNX Runtime CPU, full graph optimizations, one inter-op thread, spinning off "
            "(shared machine); speed-up = ratio of median latencies"
        ),
        "quantization": (
            "runtime.quantize: onnxruntime quant_pre_process + quantize_static, QDQ, "
            "per-channel symmetric int8 weights, uint8 activations, minmax calibration; dense "
            "and low-rank quantized alike"
        ),
        "environment": environment(),
        "models": models,
        "goals": goals(models),
    }
    write_json(args.output, result)
    write_text(args.output.with_suffix(".md"), to_markdown(result))
    plot(result, args.output.with_suffix(".png"))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
