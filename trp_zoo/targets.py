"""Which convs of a model get factorized.

Every ``nn.Conv2d`` (and timm variant) with ``groups == 1`` is a candidate, except the
stem (the conv that sees the image) and the classifier, which stay dense unless an
``include`` pattern names them. Patterns are shell-style globs (``fnmatch``) on module
names as ``named_modules`` prints them, with DDP's ``module.`` prefix removed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from .convs import unsupported_reason
from .modules import canonical_name, close_matches, unwrap_model

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
) -> dict[str, nn.Conv2d]:
    """Convs to factorize, by canonical name.

    ``names`` (a rank plan's keys) selects layers explicitly; every name must be a
    factorizable conv. Otherwise candidates are all factorizable convs but the stem and
    classifier. ``include`` narrows the set (and can bring the stem or classifier back);
    ``exclude`` removes layers. A pattern that matches no conv is an error.
    """
    convs = conv_layers(model)
    include_l, exclude_l = _as_list(include), _as_list(exclude)
    for kind, patterns in (("include", include_l), ("exclude", exclude_l)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in convs):
                raise ValueError(
                    f"{kind} pattern {p!r} matches no conv layer of the model."
                    f"{close_matches(p, convs)} Patterns are fnmatch globs on module names, "
                    "e.g. 'layer3.*'."
                )
    if names is not None:
        chosen: dict[str, nn.Conv2d] = {}
        for raw in names:
            name = canonical_name(raw)
            if name not in convs:
                raise ValueError(
                    f"rank plan names {raw!r}, which is not a conv layer of the model."
                    f"{close_matches(name, convs)}"
                )
            reason = unsupported_reason(convs[name])
            if reason:
                raise ValueError(f"rank plan names {name!r}, which cannot be factorized: {reason}")
            chosen[name] = convs[name]
        candidates = chosen
    else:
        protected = stem_names(model) | classifier_names(model)
        candidates = {
            n: m
            for n, m in convs.items()
            if unsupported_reason(m) is None and (n not in protected or _matches(n, include_l))
        }
    return {
        n: m
        for n, m in candidates.items()
        if (not include_l or _matches(n, include_l)) and not _matches(n, exclude_l)
    }
