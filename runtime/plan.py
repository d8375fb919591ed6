"""``python -m runtime.plan``: per-layer ranks for a latency or MACs budget on a target.

    python -m runtime.plan --model resnet50 --backend onnxruntime --batch-size 8 --latency 0.5
    python -m runtime.plan --checkpoint resnet18_trp_ch_fmnist --latency 0.6 --output plan.json

Measures (or reads cached) per-layer cost tables on the deployment target, selects the
ranks that keep the most spectral energy (or, with ``--sensitivity-data``, move the
predictions least) within the budget, prints the plan with its predicted latency, then
builds the dense and planned models as engines and times them interleaved. The plan file
feeds ``trp_zoo.decompose(rank=...)``, the TRP hook and the recipes' ``--rank-plan``.

Exit status: 0 on success, 2 on bad input (one line naming the problem and the fix).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trp_zoo.algorithms.decompose import densify
from trp_zoo.cli import ArgumentParser
from trp_zoo.errors import ZooError, os_error_line
from trp_zoo.fileio import writable_dir_problem, write_json
from trp_zoo.lowrank.linears import LAYER_KINDS
from trp_zoo.lowrank.schemes import SCHEMES
from trp_zoo.models.dense import create_dense_model, load_dense_weights
from trp_zoo.text_table import text_table
from trp_zoo.zoo.hub import load

from .cost_cache import CostCache, default_cache_dir
from .costs import Progress
from .data import check_sensitivity_source, sensitivity_images
from .planner import Planner
from .target import Target
from .target_plans import TargetPlan, check_fraction


def plan_model(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, int, int], str]:
    """The dense model to plan for, its input size and a description of its weights."""
    if args.checkpoint:
        model = densify(load(args.checkpoint))
        weights = f"trained weights of {args.checkpoint} (factorized layers merged back)"
    else:
        in_chans = args.input_size[0] if args.input_size else 3
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        torch.manual_seed(args.seed)
        model = create_dense_model(args.model, in_chans=in_chans, **kwargs)
        if args.weights:
            load_dense_weights(model, args.weights, "--weights", args.model)
            weights = f"weights from {args.weights}"
        else:
            weights = (
                f"random initialization (seed {args.seed}): its spectra are nearly flat, so kept "
                "energy measures how much of each layer's dimensions survive, not learned "
                "importance; pass --weights or --checkpoint for trained weights"
            )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(args.input_size or cfg.get("input_size") or ())
    if len(size) != 3:
        raise ValueError("the model has no pretrained_cfg input size; pass --input-size C H W")
    return model.eval(), (int(size[0]), int(size[1]), int(size[2])), weights


def print_plan(name: str, result: TargetPlan, weights: str, cache: str) -> None:
    """The plan as a table, with its budget, MACs and predicted latency."""
    t = result.target_key
    threads = f", {t['threads']} thread(s)" if t.get("threads") else ""
    c, h, w = result.target.input_size
    print(
        f"{name} on {t['backend']} {t['backend_version']} ({t['device']}), {t['precision']}, "
        f"batch {t['batch_size']}, input {c}x{h}x{w}{threads}"
    )
    print(f"weights: {weights}")
    print(f"cost tables: {cache}")
    rows = [
        [
            r["name"],
            r["shape"],
            "dense" if r["rank"] is None else str(r["rank"]),
            str(r["full_rank"]),
            f"{r['energy']:.3f}",
            f"{r['dense_ms']:.3f}",
            f"{r['planned_ms']:.3f}",
        ]
        for r in result.layers
    ]
    header = ["layer", "shape", "rank", "full", "energy", "dense ms"]
    print(text_table(rows, [*header, "planned ms"]))
    print(
        f"\nplan: {len(result.plan)} of {len(result.layers)} candidate layers factorized "
        f"({result.scheme} scheme), mean kept energy {result.mean_energy:.3f}"
    )
    if result.output_kl is not None:
        print(
            f"selected by measured sensitivity ({result.objective}): "
            f"summed KL {result.output_kl:.4g}"
        )
    print(
        f"budget: {result.budget} {result.fraction} of dense; MACs per image "
        f"{result.dense_macs / 1e9:.3f}G -> {result.planned_macs / 1e9:.3f}G "
        f"({result.macs_fraction:.3f} of dense, {1 / result.macs_fraction:.2f}x fewer)"
    )
    print(
        f"predicted latency: {result.predicted_ms:.2f} ms per batch of {t['batch_size']} "
        f"({result.predicted_fraction:.3f} of the dense model's {result.dense_ms:.2f} ms; "
        f"{result.predicted_quotient:.2f} of the MACs reduction realized)"
    )
    if result.layer_cost_scale < 1.0:
        print(
            f"note: the layers timed alone add up to more than the whole model, so their costs "
            f"were scaled by {result.layer_cost_scale:.2f}; at this size per-call costs "
            "dominate and the prediction is rough: check it with --measure or --calibrate"
        )
    if not result.proportional:
        print(
            f"note: no plan within this budget is predicted to realize {result.min_quotient} of "
            "its MACs reduction as speed-up; this is the closest (relax --min-quotient or the "
            "budget)"
        )


def measured_summary(stats: dict[str, Any], result: TargetPlan) -> dict[str, Any]:
    """Print and return the interleaved dense vs planned timing."""
    dense, planned = stats["dense"].p50_ms, stats["planned"].p50_ms
    speedup = dense / planned
    reduction = 1 / result.macs_fraction
    print(
        f"measured latency: {planned:.2f} ms vs dense {dense:.2f} ms "
        f"({planned / dense:.3f} of dense, {speedup:.2f}x faster; "
        f"{speedup / reduction:.2f} of the MACs reduction realized)"
    )
    return {
        "dense": stats["dense"].to_dict(),
        "planned": stats["planned"].to_dict(),
        "latency_fraction": planned / dense,
        "speedup": speedup,
        "speedup_over_macs_reduction": speedup / reduction,
    }


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before a model is built or a layer timed."""
    if args.latency is not None:
        check_fraction(args.latency, "latency")
    else:
        check_fraction(args.macs, "MACs")
    counts = {"batch_size": 1, "rank_step": 1, "max_candidates": 1, "runs": 1, "warmup": 0}
    counts |= {"calibrate": 0, "sensitivity_images": 1}
    for name, least in counts.items():
        if getattr(args, name) < least:
            raise ValueError(
                f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}"
            )
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(
            f"--num-classes must be >= 1, got {args.num_classes} (omit it for timm's default)"
        )
    if args.output:
        _check_output_file(Path(args.output))
    if args.layers not in LAYER_KINDS:
        raise ValueError(f"--layers must be one of {', '.join(LAYER_KINDS)}, got {args.layers!r}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: all CPUs), got {args.threads}")
    if args.calibrate and args.latency is None:
        raise ValueError("--calibrate corrects a --latency budget; give --latency")
    if args.checkpoint:  # options of --model that a checkpoint would silently override
        given = [f"--{n.replace('_', '-')}" for n in ("weights", "num_classes") if getattr(args, n)]
        if given:
            raise ValueError(
                f"{' and '.join(given)} apply to --model; --checkpoint brings its own weights "
                "and classifier: drop them"
            )
    if args.sensitivity_data:
        check_sensitivity_source(args.sensitivity_data, args.sensitivity_images)
    # last: it creates the directory, which a refused command line should not leave behind
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if problem := writable_dir_problem(cache, "--cache-dir"):
        raise ValueError(problem)


def _check_output_file(path: Path) -> None:
    """Refuse an ``--output`` that cannot be written, before anything is timed (it is written
    last)."""
    if path.is_dir():
        raise ValueError(
            f"--output {path} is a directory: give a file name, e.g. {path / 'plan.json'}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write --output {path} ({err.strerror or err}): choose a writable path"
        ) from None


def make_planner(args: argparse.Namespace, progress: Progress) -> tuple[Planner, str]:
    """The planner for the command's model and target, and a description of its weights."""
    model, size, weights = plan_model(args)
    target = Target(
        backend=args.backend,
        batch_size=args.batch_size,
        input_size=size,
        precision=args.precision,
        threads=args.threads or None,
    )
    images = None
    if args.sensitivity_data:
        images = sensitivity_images(args.sensitivity_data, model, size, args.sensitivity_images)
    planner = Planner(
        model,
        target,
        args.scheme,
        layers=args.layers,
        cache=CostCache(args.cache_dir),
        rank_step=args.rank_step,
        max_candidates=args.max_candidates,
        warmup=args.warmup,
        runs=args.runs,
        progress=progress,
        sensitivity_images=images,
    )
    return planner, weights


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, print, optionally measure, and write ``--output``; returns the plan's JSON."""
    check_args(args)
    progress = None if args.quiet else lambda msg: print(msg, file=sys.stderr, flush=True)
    planner, weights = make_planner(args, progress)
    stats = history = None
    if args.calibrate:
        result, stats, history = planner.calibrate(
            args.latency,
            attempts=args.calibrate,
            min_quotient=args.min_quotient,
            warmup=args.warmup,
            runs=args.runs,
            progress=progress,
        )
    else:
        result = planner.select(
            latency=args.latency, macs=args.macs, min_quotient=args.min_quotient
        )
    name = args.checkpoint or args.model
    table = planner.table
    cache = f"{planner.cache.root} ({len(table.measured)} timed, {len(table.reused)} reused)"
    print_plan(name, result, weights, cache)
    out = {"model": name, "weights": weights, **result.to_dict()}
    if history is not None:
        out["calibration"] = history
    if args.measure or stats is not None:
        if stats is None:
            if progress:
                progress("timing the dense and planned models, interleaved")
            stats = planner.measure({"planned": result.plan}, warmup=args.warmup, runs=args.runs)
        out["measured"] = measured_summary(stats, result)
    if args.output:
        write_json(args.output, out)
        print(f"wrote {args.output} (use it with --rank-plan, or trp_zoo.decompose(rank=...))")
    return out


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m runtime.plan",
        description="Measure (or read cached) per-layer cost tables on the target, pick the "
        "ranks that keep the most spectral energy within the budget, print the plan with its "
        "predicted latency, then build dense and planned engines and time them interleaved.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="timm architecture (random weights unless --weights)")
    src.add_argument("--checkpoint", metavar="SOURCE", help="trp-zoo name, repo id or directory")
    p.add_argument("--weights", metavar="FILE", help="dense state dict for --model")
    p.add_argument("--num-classes", type=int, help="classifier size for --model")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialization")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency", type=float, metavar="FRACTION", help="of the dense latency")
    budget.add_argument("--macs", type=float, metavar="FRACTION", help="of the dense MACs")
    p.add_argument("--scheme", choices=sorted(SCHEMES), default="channel")
    p.add_argument(
        "--layers",
        default="all",
        help="candidate layers: conv, linear or all (the stem and classifier stay dense)",
    )
    p.add_argument(
        "--backend", default="onnxruntime", help="onnxruntime, tensorrt (NVIDIA GPUs) or auto"
    )
    p.add_argument("--precision", default="fp32", help="fp32 or int8 (fp16, bf16: TensorRT)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (0: all CPUs)")
    p.add_argument("--rank-step", type=int, default=8, help="candidate ranks: multiples of this")
    p.add_argument("--max-candidates", type=int, default=32, help="ranks timed per layer, at most")
    p.add_argument(
        "--min-quotient",
        type=float,
        default=1.0,
        help="predicted speed-up over MACs reduction the plan must reach (0: no constraint)",
    )
    p.add_argument(
        "--sensitivity-data",
        metavar="DATA",
        help="price each rank by how far it moves the model's predictions on these images "
        "(fashion-mnist: its train split, or an ImageFolder directory of training images) "
        "instead of by the spectral energy it loses; needs trained weights",
    )
    p.add_argument(
        "--sensitivity-images",
        type=int,
        default=256,
        metavar="N",
        help="images for --sensitivity-data (one forward pass over them per layer rank)",
    )
    p.add_argument("--runs", type=int, default=15, help="timed runs per engine")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per engine")
    p.add_argument("--cache-dir", metavar="DIR", help="cost tables (default $TRP_ZOO_HOME/costs)")
    p.add_argument("--output", metavar="FILE", help="write the plan as JSON")
    p.add_argument(
        "--measure",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build and time the dense and planned models",
    )
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="with --latency: up to N measured attempts, the budget corrected by each "
        "measurement, so that the measured (not predicted) latency meets it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ZooError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a cache or output path that cannot be written
        print(f"error: {os_error_line(err)} (--cache-dir, --output)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no plan written; rerun the command", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
