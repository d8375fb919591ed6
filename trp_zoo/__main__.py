"""``python -m trp_zoo``: the zoo's command line.

Subcommands: ``list`` (the zoo's models, with the accuracy measured for those trained
here), ``info NAME`` (one model in detail), ``publish CHECKPOINT_DIR --repo ORG/NAME``,
Rank plans for a deployment target are the runtime's: ``python -m runtime.plan``. Each
subcommand is an ``add_<name>(subparsers)`` function in ``SUBCOMMANDS`` that sets
``run``; add one there to extend the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from .cli import ArgumentParser
from .errors import ZooError, os_error_line
from .text_table import text_table
from .zoo.hub import model_info
from .zoo.model_repo import read_results
from .zoo.publish import publish
from .zoo.registry import REGISTRY, list_models
from .zoo.store import local_path

Subparsers = Any  # argparse's _SubParsersAction is private


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
    print(text_table(table, header))
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


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [add_list, add_info, add_publish]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m trp_zoo",
        description="trp-zoo: low-rank timm models trained with Trained Rank Pruning.",
        epilog="rank plans for a deployment target (latency-aware, measured):\n"
        "  python -m runtime.plan --help\n"
        "engines for a model, with accuracy and speed checks:\n"
        "  python -m runtime.build_engine --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:  # the command moved to the runtime, which measures
        print(
            "error: rank plans for a deployment target are made by the runtime: "
            f"python -m runtime.plan {' '.join(argv[1:])}".rstrip(),
            file=sys.stderr,
        )
        return 2
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
        print(f"error: {os_error_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
