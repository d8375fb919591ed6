"""Which layers of a model get factorized.

Every ``nn.Conv2d`` (and timm variant) with ``groups == 1`` and every ``nn.Linear`` is a
candidate (``layers="conv"`` or ``"linear"`` keeps one kind), except the stem (the conv
that sees the image) and the classifier, which stay dense unless an ``include`` pattern
names them. A layer that cannot be factorized stays dense with its reason in the log.
Patterns are shell-style globs (``fnmatch``) on module names as ``named_modules`` prints
them, with DDP's ``module.`` prefix removed.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence

from torch import nn

from ..lowrank.linears import Layer, LayerKind, check_kind, is_kind, unsupported_reason
from ..modules import canonical_name, close_matches, unwrap_model

logger = logging.getLogger(__name__)

_WORDS = {"conv": "conv", "linear": "linear", "all": "conv or linear"}

Patterns = str | Sequence[str] | None


def _as_list(patterns: Patterns) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every ``nn.Conv2d`` of the model by canonical name, in registration order."""
    model = unwrap_model(model)
    return {canonical_name(n): m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def kind_layers(model: nn.Module, layers: LayerKind = "all") -> dict[str, Layer]:
    """Every conv and/or Linear of the model (by ``layers``) by canonical name, in order."""
    model = unwrap_model(model)
    return {
        canonical_name(n): m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and is_kind(m, layers)
    }


def _cfg_names(model: nn.Module, key: str) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    value = cfg.get(key) if isinstance(cfg, dict) else None
    return _as_list(value)


def stem_names(model: nn.Module) -> set[str]:
    """Names of the convs that see the input image."""
    model = unwrap_model(model)
    convs = conv_layers(model)
    names = {n for n in _cfg_names(model, "first_conv") if n in convs}
    if not names and convs:
        names = {next(iter(convs))}
    return names


def classifier_names(model: nn.Module) -> set[str]:
    """Names of the classifier modules (timm's ``pretrained_cfg``, else the last layer)."""
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    names = {n for n in _cfg_names(model, "classifier") if n in modules}
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:  # some timm heads raise when reset; the cfg name is enough then
            head = None
        names |= {n for n, m in modules.items() if head is not None and m is head and n}
    if not names:
        last = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
        names = set(last[-1:])
    return {canonical_name(n) for n in names}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_targets(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    names: Iterable[str] | None = None,
    layers: LayerKind = "all",
) -> dict[str, Layer]:
    """Layers to factorize, by canonical name.

    ``names`` (a rank plan's keys) selects layers explicitly; every name must be a
    factorizable conv or Linear. Otherwise candidates are all factorizable layers of kind
    ``layers`` (``conv``, ``linear`` or ``all``) but the stem and classifier. ``include``
    narrows the set (and can bring the stem or classifier back); ``exclude`` removes
    layers. A pattern that matches no layer of that kind is an error.
    """
    layers = check_kind(layers)
    model = unwrap_model(model)
    found = kind_layers(model, layers if names is None else "all")
    include_l, exclude_l = _as_list(include), _as_list(exclude)
    for kind, patterns in (("include", include_l), ("exclude", exclude_l)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in found):
                raise ValueError(
                    f"{kind} pattern {p!r} matches no {_WORDS[layers]} layer of the model."
                    f"{close_matches(p, found)} Patterns are fnmatch globs on module names, "
                    "e.g. 'layer3.*'."
                )
    candidates: dict[str, Layer] = {}
    if names is not None:
        for raw in names:
            name = canonical_name(raw)
            if name not in found:
                raise ValueError(
                    f"rank plan names {raw!r}, which is not a conv or linear layer of the model."
                    f"{close_matches(name, found)}"
                )
            reason = unsupported_reason(found[name], model, name)
            if reason:
                raise ValueError(f"rank plan names {name!r}, which cannot be factorized: {reason}")
            candidates[name] = found[name]
    else:
        protected = stem_names(model) | classifier_names(model)
        for n, m in found.items():
            if n in protected and not _matches(n, include_l):
                continue
            reason = unsupported_reason(m, model, n)
            if reason is None:
                candidates[n] = m
            elif (not include_l or _matches(n, include_l)) and not _matches(n, exclude_l):
                logger.info("%s: kept dense, %s", n, reason)
    return {
        n: m
        for n, m in candidates.items()
        if (not include_l or _matches(n, include_l)) and not _matches(n, exclude_l)
    }
