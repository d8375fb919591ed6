"""The factorized architecture as a timm model entrypoint: ``trp_factorized``.

Importing ``trp_zoo`` registers it, so timm's own loader reads our checkpoints::

    timm.create_model("hf-hub:ORG/NAME", pretrained=True)
    timm.create_model("local-dir:PATH", pretrained=True)

timm reads ``config.json``: ``architecture`` names this entrypoint and ``model_args``
(``base_architecture``, ``scheme``, ``rank_plan``, ``num_classes``, ``in_chans``, ...)
become its keyword arguments. The entrypoint builds the base timm model, swaps the planned
convs and Linears for ``FactorizedConv2d`` and ``FactorizedLinear`` layers, and lets
timm's ``build_model_with_cfg`` attach the ``pretrained_cfg`` and load
``model.safetensors``, after checking that the file is intact and that its tensors fit
the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

import timm
import torch
from safetensors import SafetensorError
from timm.models import build_model_with_cfg, register_model
from torch import nn

from ..algorithms.decompose import factorize_architecture
from ..errors import CheckpointError
from .hub import download_file
from .model_repo import ARCHITECTURE, WEIGHTS_NAME, verify_weights, weights_mismatch

_REQUIRED = ("base_architecture", "scheme", "rank_plan")
_WEIGHT_SOURCES = ("url", "file", "state_dict", "hf_hub_id")
_FEATURE_ARGS = ("out_indices", "feature_cls", "feature_cfg")
_LOADING_ARGS = ("cache_dir", "pretrained_cfg_overlay")


def _base_pretrained_cfg(base: str) -> dict[str, Any]:
    """The base model's pretrained_cfg without its weight source and provenance."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(base)
    out = cfg.to_dict(remove_source=True) if cfg is not None else {}
    for key in ("tag", "license", "origin_url", "paper_name", "paper_ids", "notes", "description"):
        out.pop(key, None)
    out["architecture"] = ARCHITECTURE
    return out


def _build(where: str, base: str, scheme: str, plan: Mapping[str, int], **kwargs: Any) -> nn.Module:
    try:
        model = timm.create_model(base, pretrained=False, **kwargs)
    except TypeError as err:  # an argument the base model does not take
        raise CheckpointError(
            f"{where}: {base} does not take the arguments it was given ({err}): check "
            "config.json's model_args and the keyword arguments passed to the loader"
        ) from None
    try:
        return factorize_architecture(model, scheme, plan)
    except ValueError as err:  # a scheme or rank plan this base model cannot take
        raise CheckpointError(
            f"{where}: config.json's model_args (scheme {scheme!r}, rank_plan) do not fit "
            f"{base} ({err}): the config.json is damaged or belongs to another model; save or "
            "download the checkpoint again"
        ) from None


def _where(cfg: Mapping[str, Any]) -> str:
    if cfg.get("source") == "local-dir":
        return str(cfg.get("file"))
    if cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    return ARCHITECTURE


def _weights_file(cfg: Mapping[str, Any], cache_dir: str | Path | None) -> Path | None:
    """The local path of the weights timm is about to load, when they come from a checkpoint."""
    from timm.models._hub import hf_split

    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return Path(cfg["file"]) / WEIGHTS_NAME
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        repo_id, revision = hf_split(cfg["hf_hub_id"])
        filename = cfg.get("hf_hub_filename") or WEIGHTS_NAME
        return download_file(repo_id, filename, revision=revision, cache_dir=cache_dir)
    return None


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _check_weights(
    state_dict: dict[str, torch.Tensor],
    model: nn.Module,
    *,
    cfg: Mapping[str, Any],
    num_classes: int,
    in_chans: int,
    summary: str,
) -> dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: refuse weights that do not fit the architecture."""
    skip = []
    if num_classes != cfg.get("num_classes"):
        skip += _as_list(cfg.get("classifier"))  # timm drops the head to adapt it
    if in_chans != (cfg.get("input_size") or (3,))[0]:
        skip += _as_list(cfg.get("first_conv"))  # timm adapts the stem
    problems = weights_mismatch(state_dict, model, skip)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
        )
        raise CheckpointError(
            f"{_where(cfg)}: the weights in {WEIGHTS_NAME} do not match the architecture in its "
            f"config.json ({summary}): {shown}. config.json and {WEIGHTS_NAME} come from different "
            "saves; write both again with trp_zoo.save_pretrained (and publish the matching pair)."
        )
    return state_dict


@register_model
def trp_factorized(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model whose planned convs and Linears are factorized layers.

    Keyword arguments (from a checkpoint's ``config.json`` ``model_args``):
    ``base_architecture`` (a timm model name), ``scheme`` (``channel`` or ``spatial``),
    ``rank_plan`` (``{layer name: rank}``); the rest (``num_classes``, ``in_chans``, ...)
    go to ``timm.create_model(base_architecture, ...)``.
    """
    features_only = bool(kwargs.pop("features_only", False))
    feature_args = {k: kwargs.pop(k) for k in _FEATURE_ARGS if k in kwargs}
    missing = [k for k in _REQUIRED if k not in kwargs]
    if missing:
        raise CheckpointError(
            f"{ARCHITECTURE} needs {', '.join(missing)}: load a trp-zoo checkpoint with "
            "timm.create_model('hf-hub:ORG/NAME') or 'local-dir:PATH' (its config.json's "
            "model_args hold them), or use trp_zoo.load(NAME)"
        )
    base = kwargs.pop("base_architecture")
    scheme = kwargs.pop("scheme")
    plan = kwargs.pop("rank_plan")
    if not isinstance(base, str) or not timm.is_model(base):
        given = kwargs.get("pretrained_cfg") or {}
        given = given if isinstance(given, dict) else given.to_dict()
        raise CheckpointError(
            f"{_where(given)}: config.json's model_args.base_architecture {base!r} is not a "
            f"timm model (timm {timm.__version__}); fix config.json or install the timm "
            "version the checkpoint was saved with"
        )
    cfg = kwargs.pop("pretrained_cfg", None) or _base_pretrained_cfg(base)
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict()
    if pretrained and not any(cfg.get(k) for k in _WEIGHT_SOURCES):
        raise CheckpointError(
            f"{ARCHITECTURE} has no weights of its own: load a checkpoint with "
            "timm.create_model('hf-hub:ORG/NAME', pretrained=True) or 'local-dir:PATH', or "
            "trp_zoo.load(NAME)"
        )
    if pretrained:
        weights = _weights_file(cfg, kwargs.get("cache_dir"))
        if weights is not None:
            verify_weights(weights)
    filter_fn = partial(
        _check_weights,
        cfg=cfg,
        num_classes=int(kwargs.get("num_classes", cfg.get("num_classes", 1000))),
        in_chans=int(kwargs.get("in_chans", (cfg.get("input_size") or (3,))[0])),
        summary=f"{base}, {scheme} scheme, {len(plan)} factorized layers",
    )
    try:
        model = build_model_with_cfg(
            partial(_build, _where(cfg), base, scheme, plan),
            ARCHITECTURE,
            pretrained,
            pretrained_cfg=cfg,
            pretrained_filter_fn=filter_fn,
            **kwargs,
        )
    except SafetensorError as err:
        raise CheckpointError(
            f"{_where(cfg)}: {WEIGHTS_NAME} is corrupt ({err}); download or save it again"
        ) from None
    if not features_only:
        return model
    model_args = {k: v for k, v in kwargs.items() if k not in _LOADING_ARGS}
    return _feature_extractor(model, base, scheme, plan, {**model_args, **feature_args})


def _feature_extractor(
    full: nn.Module, base: str, scheme: str, plan: Mapping[str, int], kwargs: dict[str, Any]
) -> nn.Module:
    """``features_only``: the base architecture's own feature extractor (timm builds it with
    the base's feature settings), factorized by the plan and holding ``full``'s weights."""
    from timm.models._builder import pretrained_cfg_for_features

    features = timm.create_model(base, pretrained=False, features_only=True, **kwargs)
    names = {n for n, _ in full.named_modules()} | set(full.state_dict())

    def in_full(name: str) -> str | None:
        """The full model's name of a feature extractor's module or tensor."""
        head, _, rest = name.partition(".")
        candidates = [name, rest if head == "model" else ""]  # FeatureGetterNet wraps .model
        # FeatureListNet/DictNet flatten one level of nn.Sequential: 'stages.0' -> 'stages_0'
        candidates += [
            f"{head[:i]}.{head[i + 1 :]}" + (f".{rest}" if rest else "")
            for i, c in enumerate(head)
            if c == "_"
        ]
        return next((c for c in candidates if c and c in names), None)

    feature_plan = {}
    for name, _ in features.named_modules():
        full_name = in_full(name)
        if full_name is not None and full_name in plan:
            feature_plan[name] = plan[full_name]
    factorize_architecture(features, scheme, feature_plan)
    weights = full.state_dict()
    state, unmatched = {}, []
    for key in features.state_dict():
        full_key = in_full(key)
        if full_key is None or full_key not in weights:
            unmatched.append(key)
        else:
            state[key] = weights[full_key]
    if unmatched:
        raise CheckpointError(
            f"features_only: {len(unmatched)} tensors of {base}'s feature extractor have no "
            f"counterpart in the factorized model ({', '.join(unmatched[:3])}, ...); load the "
            "full model and take its forward_features or forward_intermediates instead"
        )
    features.load_state_dict(state)
    cfg = pretrained_cfg_for_features(cast(dict[str, Any], full.pretrained_cfg))
    features.pretrained_cfg = cfg  # type: ignore[assignment]  # as timm's builder does
    features.default_cfg = cfg  # type: ignore[assignment]
    return features
