"""The floor under a factorized model's latency: the share of ONNX Runtime CPU time (phi_T)
and of MACs (phi_M) that no rank reduces, and the best speed-up / MACs reduction it allows.

Each timm model (random weights, seed 0, 3x224x224) is exported with ``runtime.export``,
run in ONNX Runtime (CPU, one intra-op thread, full optimizations, profiling on) at
--batch-size, and every profiled node of the optimized graph is classified: a candidate is
a MatMul/Gemm (or a group-1 conv) whose weight is an initializer, one per layer that
``select_targets`` returns (block Linears; convnext's downsampling convs), i.e. what a rank
plan factorizes; the floor is everything else: attention's QK^T/softmax/AV, LayerNorm,
GELU, bias and residual adds, reshapes and transposes, the stem conv, depthwise convs and
the classifier (the last weighted MatMul/Gemm). Node times are per-node medians over the
timed runs (``phi_T_from_means``: means, which keep the shared machine's stalls). Candidate
MACs come from forward hooks on the ``select_targets`` layers; the total from
``trp_zoo.count_flops`` (which counts CPU attention).

Bound: if factorized layers ran at the dense GEMMs' time per MAC (the best case), a latency
fraction L needs the candidates' MACs cut to x = (L - phi_T) / (1 - phi_T) (none when
L <= phi_T); the model's MACs become m = phi_M + (1 - phi_M) x of dense, and the best
quotient speed-up / MACs reduction is q_max = m / L.

    python benchmarks/transformer_floor.py --runs 12     # about 2 minutes on 2 CPU cores

Writes benchmarks/results/transformer_floor.json and .md.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from torch import nn

import trp_zoo
from runtime.backends.onnxruntime import session_options
from runtime.export import INPUT_NAME, export_onnx
from runtime.report import environment
from trp_zoo.algorithms.layers import select_targets
from trp_zoo.fileio import write_json, write_text
from trp_zoo.lowrank.macs import conv_macs

INPUT_SIZE = (3, 224, 224)
WEIGHTED = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Conv", "FusedConv"}


def candidate_macs(model: nn.Module) -> tuple[int, int]:
    """MACs of one image in the layers ``select_targets`` returns, and how many layers."""
    targets = select_targets(model)
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += inp[0].numel() // m.in_features * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            pixels, (kh, kw) = out.numel() // m.out_channels, m.kernel_size[:2]
            total += conv_macs(m.in_channels // m.groups, m.out_channels, (kh, kw), pixels)

    handles = [m.register_forward_hook(hook) for m in targets.values()]
    with torch.no_grad():
        model(torch.zeros(1, *INPUT_SIZE))
    for h in handles:
        h.remove()
    return total, len(targets)


def classify(graph: onnx.GraphProto, order: list[str]) -> dict[str, str]:
    """Node name -> ``candidate`` or a floor label, for the nodes in execution ``order``."""
    inits = {t.name for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    weighted = [n for n in order if nodes[n].op_type in WEIGHTED and nodes[n].input[1:2]]
    weighted = [n for n in weighted if nodes[n].input[1] in inits]
    convs = [n for n in weighted if "Conv" in nodes[n].op_type]
    head = [n for n in weighted if "Conv" not in nodes[n].op_type][-1:]
    producer = {o: n.name for n in graph.node for o in n.output}
    labels: dict[str, str] = {}
    for name in order:
        node = nodes[name]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if name in head:
            labels[name] = f"{node.op_type} (head)"
        elif convs and name == convs[0]:
            labels[name] = f"{node.op_type} (stem)"
        elif name in weighted and group == 1:
            labels[name] = "candidate"
        elif name in weighted:
            labels[name] = f"{node.op_type} (grouped)"
        elif (
            node.op_type == "Add"
            and any(labels.get(producer.get(i, "")) == "candidate" for i in node.input)
            and set(node.input) & inits
        ):
            labels[name] = "Add (Linear bias)"
        elif node.op_type in WEIGHTED:
            labels[name] = f"{node.op_type} (no weight)"
        else:
            labels[name] = node.op_type
    return labels


def profile_arch(arch: str, batch: int, warmup: int, runs: int, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = timm.create_model(arch).eval()
    total_macs = trp_zoo.count_flops(model, INPUT_SIZE)
    cand_macs, n_targets = candidate_macs(model)
    exported = export_onnx(model, tmp / f"{arch}.onnx", INPUT_SIZE)
    so = session_options(1, spinning=False)
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"{arch}-profile")
    so.optimized_model_filepath = str(tmp / f"{arch}.optimized.onnx")
    session = ort.InferenceSession(str(exported.path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *INPUT_SIZE), dtype=np.float32)
    wall = []
    for _ in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        wall.append(time.perf_counter() - start)
    events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e["ts"], e["dur"]) for e in events if e["name"] == "model_run")
    starts = [ts for ts, _ in model_runs[warmup:]]
    per_node: dict[str, list[float]] = defaultdict(list)
    per_run = [0.0] * runs
    for e in events:
        if e["cat"] == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[0]:
            per_node[e["name"].removesuffix("_kernel_time")].append(e["dur"])
            per_run[bisect.bisect_right(starts, e["ts"]) - 1] += e["dur"]
    labels = classify(onnx.load(so.optimized_model_filepath).graph, list(per_node))
    med = {n: statistics.median(d) for n, d in per_node.items()}
    total = sum(med.values())
    by_label: dict[str, float] = defaultdict(float)
    for n, t in med.items():
        by_label[labels[n]] += t
    floor_t = total - by_label.pop("candidate", 0.0)
    n_cand = sum(1 for v in labels.values() if v == "candidate")
    top = sorted(by_label.items(), key=lambda kv: -kv[1])[:8]
    return {
        "arch": arch,
        "macs_per_image": total_macs,
        "candidate_macs_per_image": cand_macs,
        "candidate_layers": n_targets,
        "candidate_onnx_nodes": n_cand,
        "phi_T": round(floor_t / total, 4),
        "phi_T_from_means": round(
            sum(sum(d) for n, d in per_node.items() if labels[n] != "candidate")
            / sum(sum(d) for d in per_node.values()),
            4,
        ),
        "phi_M": round(1 - cand_macs / total_macs, 4),
        "node_time_ms": round(total / 1e3, 2),
        "floor_time_ms": round(floor_t / 1e3, 2),
        "floor_top8": [
            {"op": k, "ms": round(v / 1e3, 2), "share": round(v / total, 4)} for k, v in top
        ],
        "sanity": {
            "node_time_per_run_ms_median": round(statistics.median(per_run) / 1e3, 2),
            "model_run_ms_median": round(
                statistics.median(d for _, d in model_runs[warmup:]) / 1e3, 2
            ),
            "wall_ms_median": round(statistics.median(wall[warmup:]) * 1e3, 2),
        },
    }


def bound(phi_t: float, phi_m: float, target: float) -> dict[str, Any]:
    if target <= phi_t:
        return {"L": target, "x": None, "m": None, "q_max": None}
    x = (target - phi_t) / (1 - phi_t)
    m = phi_m + (1 - phi_m) * x
    return {"L": target, "x": round(x, 3), "m": round(m, 3), "q_max": round(m / target, 3)}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | phi_T (time) | phi_M (MACs) | L | x (candidate MACs kept) | m (model MACs) "
        "| q_max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["archs"]:
        for b in r["bounds"]:
            cells = ["unreachable"] * 3 if b["x"] is None else [b["x"], b["m"], b["q_max"]]
            lines.append(
                f"| {r['arch']} | {r['phi_T']:.3f} | {r['phi_M']:.3f} | {b['L']} | "
                + " | ".join(str(c) for c in cells)
                + " |"
            )
    lines += [
        "",
        f"{result['setting']}; 1-min load average {result['load_average_1min']} (before, after).",
        "",
        "Floor time by op (share of all node time, top 8):",
        "",
    ]
    for r in result["archs"]:
        ops = ", ".join(f"{o['op']} {o['share']:.1%}" for o in r["floor_top8"])
        s = r["sanity"]
        lines.append(
            f"- {r['arch']}: {ops} (phi_T from per-node means {r['phi_T_from_means']}; "
            f"per-node medians sum to {r['node_time_ms']} ms; per run, node time "
            f"{s['node_time_per_run_ms_median']} ms, "
            f"wall {s['wall_ms_median']} ms/run; {r['candidate_onnx_nodes']} candidate nodes "
            f"for {r['candidate_layers']} layers)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archs", default="deit_tiny_patch16_224,vit_small_patch16_224,convnext_tiny"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--targets", default="0.55,0.65", help="latency fractions L")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/transformer_floor"))
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    load = [round(os.getloadavg()[0], 2)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            print(arch, file=sys.stderr, flush=True)
            r = profile_arch(arch, args.batch_size, args.warmup, args.runs, Path(tmp))
            r["bounds"] = [bound(r["phi_T"], r["phi_M"], t) for t in targets]
            results.append(r)
    load.append(round(os.getloadavg()[0], 2))
    result = {
        "command": "python benchmarks/transformer_floor.py " + " ".join(argv or sys.argv[1:]),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "setting": (
            f"timm models, random weights (seed 0), {list(INPUT_SIZE)}, batch {args.batch_size}; "
            "runtime.export, ONNX Runtime CPU, full optimizations, 1 intra-op thread, spinning "
            f"off, profiling on; {args.warmup} warm-up + {args.runs} timed runs, per-node median"
        ),
        "environment": {**environment(), "timm": timm.__version__},
        "load_average_1min": load,
        "archs": results,
    }
    write_json(args.output.with_suffix(".json"), result)
    write_text(args.output.with_suffix(".md"), to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
