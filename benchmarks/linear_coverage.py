"""Which timm transformer, MLP and hybrid families decompose with factorized Linears.

For each architecture (random init, no weights): ``decompose(model, rank=0.5)`` (every conv
and Linear but the stem and classifier a candidate), one forward pass compared with the
rank-r projected dense model, MACs before and after by ``count_flops``, and the layers
kept dense with their logged reasons. Writes ``benchmarks/results/linear_coverage.json``
and ``.md``.

    python benchmarks/linear_coverage.py
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import timm
import torch

import trp_zoo
from trp_zoo.algorithms.decompose import project_weights
from trp_zoo.algorithms.layers import classifier_names
from trp_zoo.fileio import write_json

# architecture -> create_model kwargs that keep it small (img_size/depth where accepted)
ARCHITECTURES: dict[str, dict] = {
    "vit_small_patch16_224": dict(img_size=64, depth=2),
    "vit_base_patch16_224": dict(img_size=64, depth=2),
    "vit_little_patch16_reg4_gap_256": dict(img_size=64, depth=2),
    "deit3_small_patch16_224": dict(img_size=64, depth=2),
    "flexivit_small": dict(img_size=64, depth=2),
    "beit_base_patch16_224": dict(img_size=64, depth=2),
    "beitv2_base_patch16_224": dict(img_size=64, depth=2),
    "eva02_small_patch14_224": dict(img_size=56, depth=2),
    "cait_xxs24_224": dict(img_size=64, depth=2),
    "xcit_nano_12_p16_224": dict(img_size=64, depth=2),
    "crossvit_tiny_240": dict(img_size=240),
    "pit_ti_224": dict(),
    "twins_svt_small": dict(),
    "twins_pcpvt_small": dict(),
    "pvt_v2_b0": dict(),
    "swinv2_tiny_window8_256": dict(),
    "swin_s3_tiny_224": dict(),
    "convit_tiny": dict(depth=2),
    "coat_lite_tiny": dict(),
    "tnt_s_patch16_224": dict(depth=2),
    "gcvit_xxtiny": dict(),
    "nest_tiny": dict(),
    "davit_tiny": dict(),
    "focalnet_tiny_srf": dict(),
    "hiera_tiny_224": dict(),
    "tiny_vit_5m_224": dict(),
    "efficientformer_l1": dict(),
    "efficientformerv2_s0": dict(),
    "mobilevit_xxs": dict(),
    "mobilevitv2_050": dict(),
    "edgenext_xx_small": dict(),
    "poolformer_s12": dict(),
    "caformer_s18": dict(),
    "convnextv2_atto": dict(),
    "inception_next_tiny": dict(),
    "mambaout_femto": dict(),
    "gmlp_s16_224": dict(),
    "gmixer_12_224": dict(),
    "resmlp_12_224": dict(),
    "mixer_b16_224": dict(),
    "sequencer2d_s": dict(),
    "levit_conv_128s": dict(),
    "fastvit_t8": dict(),
    "efficientvit_b0": dict(),
    "efficientvit_m0": dict(),
    "nextvit_small": dict(),
    "coatnet_0_rw_224": dict(),
    "maxxvitv2_nano_rw_256": dict(),
}


class _Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def probe(name: str, kwargs: dict) -> dict:
    row: dict = {"architecture": name, "kwargs": kwargs}
    start = time.perf_counter()
    handler = _Reasons()
    logging.getLogger("trp_zoo").addHandler(handler)
    try:
        dense = timm.create_model(name, num_classes=10, **kwargs).eval()
        with torch.no_grad():  # some families zero-init their head, hiding any difference
            for head in classifier_names(dense):
                weight = getattr(dense.get_submodule(head), "weight", None)
                if isinstance(weight, torch.Tensor):
                    torch.nn.init.normal_(weight)
        cfg: dict[str, Any] = getattr(dense, "pretrained_cfg", {})
        size = tuple(cfg["input_size"])
        if "img_size" in kwargs:
            size = (size[0], kwargs["img_size"], kwargs["img_size"])
        low = trp_zoo.decompose(dense, rank=0.5).eval()
        plan = trp_zoo.rank_plan(low)
        x = torch.randn(2, *size)
        with torch.no_grad():
            out = low(x)
            ref = project_weights(dense, "channel", plan).eval()(x) if plan else dense(x)
        cost = trp_zoo.compare_cost(dense, low, size)
        linears = [n for n in plan if isinstance(low.get_submodule(n), trp_zoo.FactorizedLinear)]
        row.update(
            ok=True,
            input_size=list(size),
            factorized_linears=len(linears),
            factorized_convs=len(plan) - len(linears),
            rel_err_vs_projected=float((out - ref).norm() / ref.norm().clamp_min(1e-30)),
            macs_reduction=round(cost.macs_reduction, 3),
            kept_dense=[line for line in handler.lines if "kept dense" in line],
        )
    except Exception as err:  # report every failure, keep sweeping
        row.update(ok=False, error=f"{type(err).__name__}: {err}"[:400])
        row["trace"] = traceback.format_exc(limit=3)[-800:]
    finally:
        logging.getLogger("trp_zoo").removeHandler(handler)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/linear_coverage")
    p.add_argument("--only", nargs="*", help="architectures to probe (default: all listed)")
    args = p.parse_args()
    logging.getLogger("trp_zoo").setLevel(logging.INFO)
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = []
    for name in args.only or ARCHITECTURES:
        row = probe(name, ARCHITECTURES.get(name, {}))
        rows.append(row)
        print(
            json.dumps({k: v for k, v in row.items() if k not in ("trace", "kept_dense")}),
            flush=True,
        )
    if args.only and out.with_suffix(".json").is_file():  # update those rows of a full run
        fresh = {r["architecture"]: r for r in rows}
        old = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["rows"]
        rows = [fresh.pop(r["architecture"], r) for r in old] + list(fresh.values())
        rows = [r for r in rows if r["architecture"] in ARCHITECTURES]
    write_json(
        out.with_suffix(".json"),
        {"timm": timm.__version__, "torch": torch.__version__, "rows": rows},
    )
    write_markdown(rows, out.with_suffix(".md"))


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [
        "| architecture | ok | factorized Linears | factorized convs | MACs cut "
        "| rel. err vs projected | kept dense (reasons) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["ok"]:
            # "name: kept dense, why" (unsupported) or "name: rank r does not lower ..."
            reasons = sorted({line.split(": ", 1)[-1] for line in r["kept_dense"]})
            lines.append(
                f"| {r['architecture']} | yes | {r['factorized_linears']} | "
                f"{r['factorized_convs']} | "
                f"{r['macs_reduction']:.2f}x | {r['rel_err_vs_projected']:.1e} | "
                f"{len(r['kept_dense'])}: {'; '.join(reasons)[:300]} |"
            )
        else:
            lines.append(f"| {r['architecture']} | **no** | | | | | {r['error'][:200]} |")
    ok = sum(r["ok"] for r in rows)
    lines += [
        "",
        f"{ok} of {len(rows)} architectures decompose and run (random weights, "
        "`decompose(model, rank=0.5)`); command: `python benchmarks/linear_coverage.py`",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
