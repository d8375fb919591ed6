"""The model card (``README.md``) of a checkpoint, made with huggingface_hub's card tools.

The YAML header carries ``library_name: timm``, tags, data sets, license and a
``model-index`` whose every metric says how it was measured (``metric_config``) and by
which command on which date (``metric_args``). The numbers are the ones in
``results.json``; the card adds none of its own.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .results import METRICS, speedup_label


def project_link() -> str:
    """``[trp-zoo](URL)`` with the repository or home page the installed package's metadata
    names, or plain ``trp-zoo`` when it names none (no link to a page that may not exist)."""
    try:
        meta = importlib.metadata.metadata("trp-zoo")
    except importlib.metadata.PackageNotFoundError:
        return "trp-zoo"
    urls = [u.partition(",")[2].strip() for u in meta.get_all("Project-URL") or []]
    urls += meta.get_all("Home-page") or []
    url = next((u for u in urls if u.startswith("https://")), None)
    return f"[trp-zoo]({url})" if url else "trp-zoo"


TRP_PAPER = "Trained Rank Pruning for Efficient Deep Neural Networks"
TRP_ARXIV = "arXiv:1812.02402"
TRP_BIBTEX = """@article{xu2018trp,
  title   = {Trained Rank Pruning for Efficient Deep Neural Networks},
  author  = {Xu, Yuhui and Li, Yuxi and Zhang, Shuai and Wen, Wei and Wang, Botao and
             Qi, Yingyong and Chen, Yiran and Lin, Weiyao and Xiong, Hongkai},
  journal = {arXiv preprint arXiv:1812.02402},
  year    = {2018}
}"""

# data set name -> (Hugging Face data set id, display name)
DATASETS: dict[str, tuple[str, str]] = {
    "imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "fashion-mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
}
_ALIASES = {
    "imagenet": "imagenet-1k",
    "cifar-10": "cifar10",
    "fashion_mnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}


def dataset_ids(name: str) -> tuple[str, str]:
    """(hub data set id, display name) for a data set name; unknown names pass through."""
    key = name.lower()
    return DATASETS.get(_ALIASES.get(key, key), (name, name))


def _eval_results(results: Mapping[str, Any]) -> list[EvalResult]:
    metrics = results["metrics"]
    if "dataset" not in metrics:
        return []
    hub_id, display = dataset_ids(metrics["dataset"])
    prov = results.get("provenance", {})
    args = {k: prov[k] for k in ("command", "date") if k in prov} or None
    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=hub_id,
        dataset_name=display,
        dataset_split=metrics.get("split"),
    )
    out = []
    for key, spec in METRICS.items():
        if key in metrics:
            out.append(
                EvalResult(
                    **common,
                    metric_type=spec.metric_type,
                    metric_name=spec.name,
                    metric_value=metrics[key],
                    metric_config=results["how_measured"].get(key),
                    metric_args=args,
                )
            )
    for entry in results.get("speedups", []):
        extra = {k: v for k, v in entry.items() if k != "value"}
        out.append(
            EvalResult(
                **common,
                metric_type="speedup",
                metric_name=f"Speed-up vs dense ({speedup_label(entry)})",
                metric_value=entry["value"],
                metric_config="dense latency / factorized latency, same backend, same run",
                metric_args=extra,
            )
        )
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _factorized_what(arch: Mapping[str, Any]) -> str:
    """What was factorized, e.g. "12 convolutions factorized by the **channel** scheme ..."."""
    linears = int(arch.get("factorized_linear_layers", 0))  # absent in conv-only results
    convs = int(arch["factorized_layers"]) - linears
    parts = []
    if convs:
        parts.append(
            f"{convs} convolutions factorized by the **{arch['scheme']}** scheme into pairs of "
            "thin convolutions"
        )
    if linears:
        parts.append(
            f"{linears} linear layers factorized into pairs of thin linear layers "
            "(`x -> x A^T -> . B^T + bias`)"
        )
    return " and ".join(parts) or "no factorized layers"


def _body(results: Mapping[str, Any], config: Mapping[str, Any], repo_id: str | None) -> str:
    arch = results["architecture"]
    metrics, how = results["metrics"], results["how_measured"]
    name = results["name"]
    cfg = config["pretrained_cfg"]
    lines = [
        f"# {name}",
        "",
        f"`{arch['base_architecture']}` with {_factorized_what(arch)} (per-layer ranks in "
        f"`config.json`), made with {project_link()} by Trained Rank "
        f"Pruning (TRP; {TRP_PAPER}, IJCAI 2020, {TRP_ARXIV}).",
        "",
        f"- input: {'x'.join(str(v) for v in cfg['input_size'])}, mean {cfg.get('mean')}, "
        f"std {cfg.get('std')}, crop_pct {cfg.get('crop_pct')}",
        f"- classes: {config['num_classes']}",
        "",
        "## Results",
        "",
    ]
    rows = [k for k in METRICS if k in metrics]
    if rows:
        lines += ["| metric | value | how measured |", "|---|---|---|"]
        lines += [f"| {METRICS[k].name} | {_fmt(metrics[k])} | {how.get(k, '')} |" for k in rows]
    else:
        lines.append("No measurements were recorded for this checkpoint.")
    speedups = results.get("speedups", [])
    if speedups:
        lines += ["", "### Speed-up vs the dense model", ""]
        lines += ["| where | speed-up |", "|---|---|"]
        lines += [f"| {speedup_label(s)} | {_fmt(s['value'])}x |" for s in speedups]
    where = repo_id or "ORG/NAME"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import timm, trp_zoo  # importing trp_zoo registers the factorized architecture with timm",
        "",
        f'model = trp_zoo.load("{where}")',
        f'model = timm.create_model("hf-hub:{where}", pretrained=True)  # the same model',
        "```",
    ]
    prov = results.get("provenance", {})
    if prov:
        lines += ["", "## Training", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in prov.items()]
    lines += ["", "## Citation", "", "```bibtex", TRP_BIBTEX, "```", ""]
    return "\n".join(lines)


def build_card(
    results: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> ModelCard:
    """The model card for a checkpoint's ``results.json`` and ``config.json``."""
    arch = results["architecture"]
    metrics = results["metrics"]
    default_tags = [
        "image-classification",
        "timm",
        "trp-zoo",
        "low-rank",
        "trained-rank-pruning",
        f"{arch['scheme']}-decomposition",
    ]
    data = ModelCardData(
        model_name=results["name"],
        library_name="timm",
        pipeline_tag="image-classification",
        license=license,
        tags=list(dict.fromkeys([*default_tags, *tags])),
        datasets=[dataset_ids(metrics["dataset"])[0]] if "dataset" in metrics else None,
        eval_results=_eval_results(results) or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(results, config, repo_id)}")
