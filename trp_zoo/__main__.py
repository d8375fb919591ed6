"""``python -m trp_zoo``: the zoo's command line.

Subcommands: ``list`` (the zoo's models, with the accuracy measured for those trained
here), ``info NAME`` (one model in detail), ``publish CHECKPOINT_DIR --repo ORG/NAME``,
``plan --model ARCH --latency FRACTION`` (a latency-aware rank plan for a deployment target).
Each subcommand is an ``add_<name>(subparsers)`` function in ``SUBCOMMANDS`` that sets
``run``; add one there to extend the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from .checkpoint import read_results
from .errors import ZooError
from .hub import model_info
from .publish import publish
from .registry import REGISTRY, list_models
from .store import local_path

Subparsers = Any  # argparse's _SubParsersAction is private


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


# ----------------------------------------------------------------------------- list


def model_rows(pattern: str = "") -> list[dict[str, Any]]:
    """One row per zoo model: what ``list`` prints (and ``list --json`` returns)."""

    rows = []
    for name in list_models(pattern):
        entry = REGISTRY.get(name)
        stored = local_path(name)
        row: dict[str, Any] = {"name": name, "local_path": str(stored) if stored else None}
        if stored is not None:
            try:
                results = read_results(stored) or {}
            except ZooError:
                results = {}
            arch, metrics = results.get("architecture", {}), results.get("metrics", {})
            row.update(
                dataset=metrics.get("dataset", entry.dataset if entry else None),
                base_architecture=arch.get("base_architecture"),
                scheme=arch.get("scheme"),
                top1=metrics.get("top1"),
                macs_reduction=metrics.get("macs_reduction"),
                numbers="measured here",
                weights="local",
            )
        elif entry is not None:
            target = entry.targets[0] if entry.targets else None
            measured = bool(entry.metrics)
            row.update(
                dataset=entry.dataset,
                base_architecture=entry.base_architecture,
                scheme=entry.scheme,
                top1=entry.metrics.get("top1") if measured else (target and target.top1),
                macs_reduction=(
                    entry.metrics.get("macs_reduction")
                    if measured
                    else (target and target.macs_reduction)
                ),
                numbers="measured" if measured else ("paper target" if target else None),
                weights=f"hub: {entry.repo_id}" if entry.published else "not published",
            )
        rows.append(row)
    return rows


def run_list(args: argparse.Namespace) -> int:
    rows = model_rows(args.filter or "")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models match {args.filter!r}")
        return 0
    table = [
        [
            r["name"],
            r.get("dataset") or "-",
            r.get("base_architecture") or "-",
            r.get("scheme") or "-",
            _fmt(r.get("top1")),
            _fmt(r.get("macs_reduction"), "x"),
            r.get("numbers") or "-",
            r["weights"],
        ]
        for r in rows
    ]
    header = ["name", "data", "base", "scheme", "top-1", "MACs cut", "numbers", "weights"]
    print(_table(table, header))
    print(
        "\nnumbers: 'measured here' = measured by the recipe that trained the model on this "
        "machine;\n'paper target' = the TRP paper's result (Xu et al., IJCAI 2020), what the "
        "recipe aims for.\nNo trp-zoo weights are published yet; `python -m trp_zoo info NAME` "
        "shows the recipe\nthat makes a model."
    )
    return 0


def add_list(sub: Subparsers) -> None:
    p = sub.add_parser("list", help="list the zoo's models", description="List the zoo's models.")
    p.add_argument("filter", nargs="?", help="shell-style glob on names, e.g. 'resnet18*'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_list)


# ----------------------------------------------------------------------------- info


def _print_checkpoint(info: dict[str, Any]) -> None:
    cfg = info["pretrained_cfg"]
    print(f"  location:      {info['location']} ({info['origin']})")
    print(f"  architecture:  {info['architecture']} (base {info['base_architecture']})")
    print(f"  scheme:        {info['scheme']}, {len(info['rank_plan'])} factorized layers")
    print(f"  input:         {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}")
    how = (info["results"] or {}).get("how_measured", {})
    if info["metrics"]:
        print("  measured:")
        for key, value in info["metrics"].items():
            note = f"  ({how[key]})" if key in how else ""
            print(f"    {key}: {value}{note}")
    for s in info["speedups"]:
        print(f"    speed-up {s['value']}x: {s['backend']}, {s['device']}")
    if info["provenance"]:
        print("  provenance:")
        for key, value in info["provenance"].items():
            print(f"    {key}: {value}")


def run_info(args: argparse.Namespace) -> int:

    entry = REGISTRY.get(args.name)
    stored = local_path(args.name)
    if args.json:
        out: dict[str, Any] = {"registry": asdict(entry) if entry else None}
        if entry is not None:
            out["registry"]["repo_id"] = entry.repo_id
        if stored is not None or entry is None:
            out["checkpoint"] = model_info(args.name)
        print(json.dumps(out, indent=2, default=str))
        return 0
    info = model_info(args.name) if stored is not None or entry is None else None
    print(args.name)
    if entry is not None:
        status = "published" if entry.published else "not published yet"
        print(f"  hub repo:      {entry.repo_id} ({status})")
        print(f"  base:          {entry.base_architecture}, {entry.scheme} scheme")
        print(f"  data:          {entry.dataset}, {entry.num_classes} classes")
        print(f"  input:         {entry.input_size}")
        print(f"  recipe:        {entry.recipe}")
        print(f"  publish:       {entry.publish_hint()}")
        for key, value in entry.metrics.items():
            print(f"  measured {key}: {value} ({entry.metrics_source})")
        for t in entry.targets:
            extras = [("top-5", t.top5), ("dense top-1", t.dense_top1), ("params (M)", t.params_m)]
            shown = ", ".join(f"{k} {v}" for k, v in extras if v is not None)
            print(f"  paper target:  top-1 {t.top1} at {t.macs_reduction}x fewer MACs ({shown})")
            print(f"                 source: {t.source}")
    if info is not None:
        if entry is not None:
            print("  trained on this machine:")
        _print_checkpoint(info)
    elif entry is not None and not entry.published:
        print("  weights:       none on this machine; run the recipe to make them")
    return 0


def add_info(sub: Subparsers) -> None:
    p = sub.add_parser(
        "info",
        help="show one model (registry name, local name, repo id or directory)",
        description="Show a zoo model: its registry entry and, where there are weights, "
        "the checkpoint's config, measured numbers and provenance.",
    )
    p.add_argument("name", help="registry or local name, ORG/NAME, or a checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_info)


# ----------------------------------------------------------------------------- publish


def run_publish(args: argparse.Namespace) -> int:

    result = publish(
        args.checkpoint,
        args.repo,
        mirror_dir=args.mirror_dir,
        directory=args.to_dir,
        revision=args.revision,
        private=args.private,
        commit_message=args.message,
    )
    if result.target == "mirror":
        state = f"commit {result.commit}" if result.changed else f"unchanged at {result.commit}"
        print(f"published {args.repo} to mirror {result.location} ({result.revision}: {state})")
    elif result.target == "directory":
        print(f"published {args.repo} to {result.location}")
    else:
        print(f"published {result.repo_id}: {result.location}")
    return 0


def add_publish(sub: Subparsers) -> None:
    p = sub.add_parser(
        "publish",
        help="publish a checkpoint to the hub, a self-hosted mirror or a directory",
        description="Check a checkpoint directory loads, then publish it: to the hub that "
        "HF_ENDPOINT names (huggingface.co by default; log in with `hf auth login`), to a "
        "self-hosted olah mirror directory (a git commit under MIRROR/models/ORG/NAME), or "
        "to a plain directory.",
    )
    p.add_argument("checkpoint", help="checkpoint directory written by trp_zoo.save_pretrained")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="repo id to publish as")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mirror-dir", metavar="DIR", help="olah mirrors-path to commit into")
    where.add_argument("--to-dir", metavar="DIR", help="copy to DIR/ORG/NAME instead")
    p.add_argument("--revision", metavar="BRANCH", help="branch to publish on (default main)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    p.set_defaults(run=run_publish)


# ----------------------------------------------------------------------------- plan


def _plan_model(args: argparse.Namespace) -> tuple[Any, tuple[int, int, int], str]:
    """The dense model to plan for, its input size and a description of its weights."""
    import timm
    import torch

    from .decompose import densify
    from .modules import close_matches

    if args.checkpoint:
        from .hub import load

        model = densify(load(args.checkpoint))
        weights = f"trained weights of {args.checkpoint} (factorized layers merged back)"
    else:
        if not timm.is_model(args.model):
            raise ValueError(
                f"unknown model {args.model!r}: not a timm architecture."
                f"{close_matches(args.model, timm.list_models())} Pass a timm name such as "
                "resnet50, or --checkpoint for a trp-zoo checkpoint"
            )
        in_chans = args.input_size[0] if args.input_size else 3
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        torch.manual_seed(args.seed)
        model = timm.create_model(args.model, in_chans=in_chans, **kwargs)
        if args.weights:
            try:
                timm.models.load_checkpoint(model, args.weights, strict=True)
            except (FileNotFoundError, RuntimeError, KeyError) as err:
                raise ValueError(
                    f"--weights {args.weights}: {err}. Give a state-dict file of a {args.model} "
                    "with the same input channels and classes"
                ) from None
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


def _sensitivity_images(args: argparse.Namespace, model: Any, size: tuple[int, int, int]) -> Any:
    """``--sensitivity-images`` images of ``--sensitivity-data``, preprocessed for the model."""
    import torch

    from runtime.data import resolve_eval_data

    if args.sensitivity_data == "random":
        raise ValueError(
            "--sensitivity-data random: random inputs say nothing about what the model has "
            "learned; pass fashion-mnist or an ImageFolder directory of training images"
        )
    if args.sensitivity_images < 1:
        raise ValueError(f"--sensitivity-images must be >= 1, got {args.sensitivity_images}")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if size[0] == 1 and len(cfg.get("mean") or ()) != 1:
        # a one-channel timm model keeps ImageNet's three-channel statistics in its
        # config; normalize as the Fashion-MNIST recipe trains instead
        from .data.fashion_mnist import MEAN, STD

        cfg["mean"], cfg["std"] = (MEAN,), (STD,)
    data = resolve_eval_data(
        args.sensitivity_data,
        input_size=size,
        data_config={**cfg, "input_size": size},
        max_images=args.sensitivity_images,
        split="train",
    )
    return torch.cat([x for x, _ in data.batches(256)])


def _print_plan(name: str, result: Any, weights: str, cache: str) -> None:
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
            r["conv"],
            "dense" if r["rank"] is None else str(r["rank"]),
            str(r["full_rank"]),
            f"{r['energy']:.3f}",
            f"{r['dense_ms']:.3f}",
            f"{r['planned_ms']:.3f}",
        ]
        for r in result.layers
    ]
    header = ["layer", "conv (in->out kxk/stride @input)", "rank", "full", "energy", "dense ms"]
    print(_table(rows, [*header, "planned ms"]))
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
    if not result.proportional:
        print(
            f"note: no plan within this budget is predicted to realize {result.min_quotient} of "
            "its MACs reduction as speed-up; this is the closest (relax --min-quotient or the "
            "budget)"
        )


def run_plan(args: argparse.Namespace) -> int:
    from runtime.costs import CostCache, Target
    from runtime.errors import RuntimeToolError
    from runtime.planner import Planner, check_fraction

    from .fileio import write_json

    try:
        if args.latency is not None:  # check the budget before any measuring
            check_fraction(args.latency, "latency")
        else:
            check_fraction(args.macs, "MACs")
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0 (0: all CPUs), got {args.threads}")
        model, size, weights = _plan_model(args)
        target = Target(
            backend=args.backend,
            batch_size=args.batch_size,
            input_size=size,
            precision=args.precision,
            threads=args.threads or None,
        )
        cache = CostCache(args.cache_dir)
        progress = None if args.quiet else lambda msg: print(msg, file=sys.stderr, flush=True)
        images = _sensitivity_images(args, model, size) if args.sensitivity_data else None
        planner = Planner(
            model,
            target,
            args.scheme,
            cache=cache,
            rank_step=args.rank_step,
            max_candidates=args.max_candidates,
            warmup=args.warmup,
            runs=args.runs,
            progress=progress,
            sensitivity_images=images,
        )
        stats = None
        if args.calibrate:
            if args.latency is None:
                raise ValueError("--calibrate corrects a --latency budget; give --latency")
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
        timed = len(planner.table.measured)
        from_cache = len(planner.table.reused)
        _print_plan(name, result, weights, f"{cache.root} ({timed} timed, {from_cache} reused)")
        out = {"model": name, "weights": weights, **result.to_dict()}
        if args.calibrate:
            out["calibration"] = history
        if args.measure or stats is not None:
            if stats is None:
                if progress:
                    progress("timing the dense and planned models, interleaved")
                stats = planner.measure(
                    {"planned": result.plan}, warmup=args.warmup, runs=args.runs
                )
            dense, planned = stats["dense"].p50_ms, stats["planned"].p50_ms
            speedup = dense / planned
            reduction = 1 / result.macs_fraction
            print(
                f"measured latency: {planned:.2f} ms vs dense {dense:.2f} ms "
                f"({planned / dense:.3f} of dense, {speedup:.2f}x faster; "
                f"{speedup / reduction:.2f} of the MACs reduction realized)"
            )
            out["measured"] = {
                "dense": stats["dense"].to_dict(),
                "planned": stats["planned"].to_dict(),
                "latency_fraction": planned / dense,
                "speedup": speedup,
                "speedup_over_macs_reduction": speedup / reduction,
            }
        if args.output:
            write_json(args.output, out)
            print(f"wrote {args.output} (use it with --rank-plan, or trp_zoo.decompose(rank=...))")
    except (ValueError, RuntimeToolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def add_plan(sub: Subparsers) -> None:
    from .schemes import SCHEMES

    p = sub.add_parser(
        "plan",
        help="pick per-layer ranks for a latency or MACs budget on a deployment target",
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
        "--backend", default="onnxruntime", help="onnxruntime, tensorrt (NVIDIA GPUs) or auto"
    )
    p.add_argument("--precision", default="fp32", help="fp32 (fp16, bf16: TensorRT)")
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
    p.set_defaults(run=run_plan)


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [add_list, add_info, add_publish, add_plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trp_zoo",
        description="trp-zoo: low-rank timm models trained with Trained Rank Pruning.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ZooError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written
        if args.debug:
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"error: {err.strerror or err}{where}: check the paths given (--debug shows the "
            "traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
