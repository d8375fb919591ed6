"""``python -m runtime.build_engine``: build dense and factorized engines for a zoo model,
check their accuracy and speed, and write ``report.json`` / ``report.md``.

    python -m runtime.build_engine fmnist_resnet18_trp_ch --output engines/fmnist
    python -m runtime.build_engine ./checkpoints/my_model --backend onnxruntime \\
        --batch-sizes 1,8,32 --min-top1-agreement 0.99 --min-speedup 1.3
    python -m runtime.build_engine resnet18_trp_ch_fmnist --output engines/int8 \\
        --precision fp32,int8 --calibration-images 512 --max-top1-drop 0.5

Exit status: 0 when every gate passes, 1 when a gate fails (with a one-line reason on
stderr), 2 on bad input (a one-line error naming the problem and the fix).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from trp_zoo.cli import ArgumentParser
from trp_zoo.errors import ZooError

from .backends import BACKENDS
from .checks import Gates
from .export import DEFAULT_OPSET, MIN_OPSET
from .pipeline import RunConfig, build_and_check, parse_precisions
from .quantize import CALIBRATION_METHODS
from .report import to_markdown
from .spec import PRECISIONS, check_input_size, parse_batch_sizes


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m runtime.build_engine",
        description="Build dense and factorized engines for a zoo model, check their accuracy "
        "and speed, and write report.json and report.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="zoo model name, Hugging Face repo id, or checkpoint directory")
    p.add_argument(
        "--output", "-o", type=Path, required=True, help="directory for engines and reports"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: TensorRT where a CUDA GPU and tensorrt are present, else ONNX Runtime",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help=f"engine precision, or several comma-separated, all measured in one run (e.g. "
        f"fp32,int8: the report then has speed-ups against dense fp32): {', '.join(PRECISIONS)} "
        "(fp16/bf16: TensorRT only)",
    )
    _add_int8_arguments(p)
    p.add_argument(
        "--batch-sizes",
        default="1,8,32",
        help="comma-separated batch sizes: the engine's profile and the latency runs",
    )
    p.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="input size (default: the model's pretrained_cfg)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="evaluation data: 'fashion-mnist', an ImageFolder directory, or 'random' "
        "(default: Fashion-MNIST for Fashion-MNIST models, else random inputs)",
    )
    p.add_argument("--max-images", type=int, default=None, help="evaluate at most this many images")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per engine and batch size")
    p.add_argument("--runs", type=int, default=50, help="timed runs per engine and batch size")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: all CPUs)",
    )
    p.add_argument(
        "--spinning",
        action="store_true",
        help="ONNX Runtime: idle threads spin (lowest latency on a dedicated machine; off by "
        "default because spinning threads make timings erratic on shared machines)",
    )
    p.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace limit in GiB")
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="TensorRT timing cache file (default: per TensorRT version and GPU "
        "under $TRP_ZOO_HOME/tensorrt)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument(
        "--pad-ranks",
        type=int,
        default=16,
        metavar="M",
        help="round every rank up to a multiple of M with zero components before export: the "
        "same function with hardware-friendly channel counts, usually faster despite the "
        "extra MACs (1 keeps the model's ranks)",
    )
    p.add_argument("--force", action="store_true", help="rebuild engines even when up to date")
    p.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="do not write the measured speed-ups into the checkpoint's results and model card "
        "(only local checkpoint directories and models trained here are ever written)",
    )
    _add_gate_arguments(p)
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the report")
    return p


def _add_int8_arguments(p: argparse.ArgumentParser) -> None:
    int8 = p.add_argument_group("int8 (static quantization to a QDQ graph)")
    int8.add_argument(
        "--calibration-images",
        type=int,
        default=512,
        metavar="N",
        help="calibrate on N images of the training split (never the test split)",
    )
    int8.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="how activation ranges are chosen from the calibration images",
    )
    int8.add_argument(
        "--calibration-data",
        default=None,
        help="where the training split is: 'fashion-mnist', an ImageFolder train directory "
        "(or one holding train/), or 'random' (speed only) (default: the training split of "
        "--data)",
    )
    int8.add_argument(
        "--keep-fp32",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep the layers whose module path matches PATTERN (fnmatch, e.g. 'fc' or "
        "'layer4.*') in float; repeatable",
    )


def _add_gate_arguments(p: argparse.ArgumentParser) -> None:
    gates = p.add_argument_group("gates (exit status 1 when one fails)")
    gates.add_argument(
        "--max-abs-diff",
        type=float,
        default=None,
        help="max abs difference of engine vs PyTorch outputs",
    )
    gates.add_argument(
        "--min-top1-agreement",
        type=float,
        default=None,
        help="min fraction of images where engine and PyTorch agree on top-1",
    )
    gates.add_argument(
        "--max-top1-drop",
        type=float,
        default=None,
        help="max percentage points of engine top-1 below the model card's",
    )
    gates.add_argument(
        "--min-speedup",
        type=float,
        default=None,
        help="min factorized vs dense p50 speed-up, at every batch size",
    )


def _workspace_bytes(gib: float) -> int:
    if not math.isfinite(gib) or gib <= 0:
        raise ValueError(f"--workspace must be a positive number of GiB, e.g. 4; got {gib}")
    return int(gib * (1 << 30))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads} (omit it to use all CPUs)")
    if args.pad_ranks < 1:
        raise ValueError(
            f"--pad-ranks must be >= 1, got {args.pad_ranks} (1 keeps the trained ranks)"
        )
    precisions = parse_precisions(args.precision)
    if args.keep_fp32 and "int8" not in precisions:
        raise ValueError(
            "--keep-fp32 keeps layers of an int8 engine in float: add int8 to --precision "
            "(e.g. --precision fp32,int8) or drop it"
        )
    if args.data == "random" and args.max_top1_drop is not None:
        raise ValueError(
            "--max-top1-drop needs labelled images and --data random has none: pass --data "
            "fashion-mnist or an ImageFolder directory, or drop the gate"
        )
    return RunConfig(
        backend=args.backend,
        precision=",".join(precisions),
        batch_sizes=tuple(parse_batch_sizes(args.batch_sizes)),
        input_size=check_input_size(args.input_size) if args.input_size else None,
        data=args.data,
        max_images=args.max_images,
        warmup=args.warmup,
        runs=args.runs,
        threads=args.threads,
        spinning=args.spinning,
        workspace_bytes=_workspace_bytes(args.workspace),
        timing_cache=args.timing_cache,
        opset=args.opset,
        pad_ranks=args.pad_ranks,
        force=args.force,
        gates=Gates(
            max_abs_diff=args.max_abs_diff,
            min_top1_agreement=args.min_top1_agreement,
            max_top1_drop=args.max_top1_drop,
            min_speedup=args.min_speedup,
        ),
        progress=sys.stderr.isatty(),
        record=args.record,
        calibration_images=args.calibration_images,
        calibration_method=args.calibration_method,
        calibration_data=args.calibration_data,
        keep_fp32=tuple(args.keep_fp32),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        config = config_from_args(args)
        report = build_and_check(args.source, args.output, config)
    except (ZooError, ValueError, LookupError, OSError, RuntimeError) as err:
        # ZooError: trp-zoo's own errors, library and runtime (messages name the fix); the
        # builtins: bad values and paths reported by the libraries underneath
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no report written; rerun the command", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "error: out of memory building or timing the engines: lower --batch-sizes, "
            "--input-size or --max-images",
            file=sys.stderr,
        )
        return 2
    if not args.quiet:
        print(to_markdown(report))
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        reasons = "; ".join(f"--{g['gate']}: {g['message']}" for g in failed)
        print(f"gate failed: {reasons}", file=sys.stderr)
        return 1
    print(f"report: {args.output / 'report.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
