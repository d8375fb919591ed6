"""``report.json`` and ``report.md``: what was built, how accurate and how fast it is."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trp_zoo.environment import software_versions
from trp_zoo.fileio import write_json, write_text


def load_average() -> float | None:
    """The machine's 1-minute load average, rounded (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def environment() -> dict[str, Any]:
    """Versions of the libraries that produced the numbers, and the machine."""
    from .backends.onnxruntime import cpu_name

    env: dict[str, Any] = {
        **software_versions(("trp-zoo", "torch", "onnx", "onnxruntime")),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if (load := load_average()) is not None:
        env["load_average_1min"] = load
    trt = sys.modules.get("tensorrt")
    if trt is not None and hasattr(trt, "__version__"):
        env["tensorrt"] = trt.__version__
    return env


def write_report(
    output_dir: str | os.PathLike[str], report: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically; returns both paths."""
    out = Path(output_dir)
    json_path = out / "report.json"
    write_json(json_path, report)
    md_path = write_text(out / "report.md", to_markdown(report))
    return json_path, md_path


def _fmt(value: float | None, spec: str = ".4g", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """A human-readable summary of a report."""
    m, cost, be = report["model"], report["cost"], report["backend"]
    acc, lat = report["accuracy"], report["latency"]
    lines = [
        f"# Engine report: {m['source']}",
        "",
        f"- model: `{m['architecture']}`, {m['scheme']} scheme, {layer_counts(m)}"
        + (
            f" (ranks padded to multiples of {m['ranks_padded_to_multiple_of']})"
            if m.get("ranks_padded_to_multiple_of", 1) > 1
            else ""
        )
        + f", input {tuple(m['input_size'])}",
        f"- backend: {be['name']} {be['version']} on {be['device']}, {be['precision']}"
        + (f", {be['threads']} threads" if be.get("threads") else ""),
        f"- MACs per image: dense {cost['dense_macs']:,}, factorized {cost['factorized_macs']:,} "
        f"({cost['macs_reduction']:.2f}x fewer)",
        "",
        "## Accuracy",
        "",
        f"Evaluation data: {acc['data']}.",
        "",
        "| engine | images | max abs diff | max rel diff | top-1 agreement | engine top-1 | "
        "PyTorch top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in acc["engines"].items():
        lines.append(
            f"| {name} | {a['images']} | {a['max_abs_diff']:.3g} | {a['max_rel_diff']:.3g} | "
            f"{a['top1_agreement']:.4f} | {_fmt(a['engine_top1'], '.2f', '%')} | "
            f"{_fmt(a['torch_top1'], '.2f', '%')} |"
        )
    if acc.get("card_top1") is not None:
        lines += ["", f"Model card top-1: {acc['card_top1']:.2f}%."]
    for note in acc.get("notes", []):
        lines += ["", f"Note: {note}"]
    lines += [
        "",
        "## Latency",
        "",
        f"{lat['warmup']} warm-up runs, then {lat['runs']} timed runs per engine and batch size, "
        f"dense and factorized interleaved ({lat['timer']}).",
        "",
        "| batch | dense p50 / p90 / p99 ms | factorized p50 / p90 / p99 ms | dense img/s | "
        "factorized img/s | speed-up | MACs ratio | speed-up / MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in lat["batches"]:
        d, f = row["dense"], row["factorized"]
        lines.append(
            f"| {row['batch']} | {d['p50_ms']:.2f} / {d['p90_ms']:.2f} / {d['p99_ms']:.2f} | "
            f"{f['p50_ms']:.2f} / {f['p90_ms']:.2f} / {f['p99_ms']:.2f} | "
            f"{d['images_per_s']:.1f} | {f['images_per_s']:.1f} | {row['speedup']:.2f}x | "
            f"{row['macs_reduction']:.2f}x | {row['realized_fraction']:.2f} |"
        )
    if len(report.get("precisions") or {}) > 1:
        lines += _precision_table(report)
    if report.get("gates"):
        lines += ["", "## Gates", ""]
        for g in report["gates"]:
            lines.append(f"- {'PASS' if g['passed'] else 'FAIL'} `--{g['gate']}`: {g['message']}")
    lines += ["", "## Files", ""]
    sections = report.get("precisions") or {be["precision"]: {"engines": report["engines"]}}
    for precision, section in sections.items():
        for name, e in section["engines"].items():
            state = "built" if e["rebuilt"] else "reused"
            lines.append(
                f"- {name} {precision}: `{e['path']}` ({state}: {e['reason']}); ONNX `{e['onnx']}`"
            )
    return "\n".join(lines) + "\n"


def layer_counts(model: Mapping[str, Any]) -> str:
    """``12 factorized layers (8 convs, 4 Linears)``, from the report's model section."""
    total = model["factorized_layers"]
    kinds = [row["kind"] for row in model.get("layers") or []]
    parts = [
        f"{n} {word}{'' if n == 1 else 's'}"
        for word, n in (("conv", kinds.count("conv")), ("Linear", kinds.count("linear")))
        if n
    ]
    listed = f" ({', '.join(parts)})" if parts else ""
    return f"{total} factorized layer{'' if total == 1 else 's'}{listed}"


def _precision_table(report: Mapping[str, Any]) -> list[str]:
    """Every precision and engine in one table (the accuracy and latency above are the
    first precision's)."""
    batches = [str(b["batch"]) for b in report["latency"]["batches"]]
    lines = [
        "",
        "## Precisions",
        "",
        "Accuracy against the fp32 PyTorch model; speed-ups from the same interleaved run.",
        "",
        "| precision | engine | top-1 agreement | engine top-1 | "
        + " | ".join(f"p50 ms @{b}" for b in batches)
        + " | "
        + " | ".join(f"vs dense fp32 @{b}" for b in batches)
        + " | "
        + " | ".join(f"vs dense same precision @{b}" for b in batches)
        + " | MACs ratio |",
        "|---" * (5 + 3 * len(batches)) + "|",
    ]
    for r in report["rows"]:
        vs32 = r["speedup_vs_dense_fp32"] or {}
        lines.append(
            f"| {r['precision']} | {r['engine']} | {r['top1_agreement']:.4f} | "
            f"{_fmt(r['engine_top1'], '.2f', '%')} | "
            + " | ".join(f"{r['p50_ms'][b]:.2f}" for b in batches)
            + " | "
            + " | ".join(_fmt(vs32.get(b), ".2f", "x") for b in batches)
            + " | "
            + " | ".join(f"{r['speedup_vs_dense_same_precision'][b]:.2f}x" for b in batches)
            + f" | {r['macs_ratio']:.2f}x |"
        )
    return lines


def summary_rows(sections: Mapping[str, Any], macs_reduction: float) -> list[dict[str, Any]]:
    """One row per precision and engine: accuracy against the fp32 PyTorch model, p50
    latency per batch, speed-up against dense fp32 (None unless fp32 was built) and
    against dense of the same precision, and the MACs ratio (dense / this engine)."""
    reference = sections.get("fp32")
    rows = []
    for precision, section in sections.items():
        for name in ("dense", "factorized"):
            acc = section["accuracy"]["engines"][name]
            latency, vs_fp32, vs_dense = {}, {}, {}
            for i, b in enumerate(section["latency"]):
                ms = b[name]["p50_ms"]
                latency[str(b["batch"])] = ms
                vs_dense[str(b["batch"])] = b["dense"]["p50_ms"] / ms
                if reference is not None:
                    vs_fp32[str(b["batch"])] = reference["latency"][i]["dense"]["p50_ms"] / ms
            rows.append(
                {
                    "precision": precision,
                    "engine": name,
                    "top1_agreement": acc["top1_agreement"],
                    "engine_top1": acc["engine_top1"],
                    "torch_fp32_top1": acc["torch_top1"],
                    "p50_ms": latency,
                    "speedup_vs_dense_fp32": vs_fp32 if reference is not None else None,
                    "speedup_vs_dense_same_precision": vs_dense,
                    "macs_ratio": macs_reduction if name == "factorized" else 1.0,
                }
            )
    return rows
