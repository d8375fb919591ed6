"""What the library knows about ``nn.Linear`` and timm's variants of it.

A Linear ``N x C`` is factorized as the channel scheme of a ``1 x 1`` conv with ``C``
inputs and ``N`` outputs (``ConvGeometry.of`` gives that conv's geometry), so rank and
cost rules are shared with convs: its cost per token is ``r * (C + N)`` against ``N * C``.
``layer_scheme``, ``unsupported_reason`` and ``effective_weight`` answer for either kind.
"""

from __future__ import annotations

import inspect
import re
from typing import Literal

from timm.layers import Linear as TimmLinear
from torch import Tensor, nn

from .convs import effective_weight as conv_effective_weight
from .convs import unsupported_reason as conv_unsupported_reason
from .schemes import Scheme, get_scheme

Layer = nn.Conv2d | nn.Linear
LayerKind = Literal["conv", "linear", "all"]
LAYER_KINDS: tuple[LayerKind, ...] = ("conv", "linear", "all")
# what each kind looks for, in the words error messages use
KIND_DESCRIPTIONS = {
    "conv": "nn.Conv2d with groups=1 (and timm's conv variants)",
    "linear": "nn.Linear (and timm's Linear)",
}
_KNOWN = (nn.Linear, TimmLinear)
# child name -> a bool flag of its parent that makes the parent call the child
_CALL_SWITCHES = {"qkv": "qkv_bias_separate"}


def check_kind(layers: str) -> LayerKind:
    """``layers`` as a ``LayerKind``, or a one-line error naming the choices."""
    if layers not in LAYER_KINDS:
        raise ValueError(f"layers must be one of {', '.join(LAYER_KINDS)}; got {layers!r}")
    return layers  # type: ignore[return-value]


def looked_for(layers: LayerKind) -> str:
    """The layer types a selection of kind ``layers`` considers, for error messages."""
    kinds = ("conv", "linear") if layers == "all" else (layers,)
    return " or ".join(KIND_DESCRIPTIONS[k] for k in kinds)


def is_kind(module: nn.Module, layers: LayerKind) -> bool:
    """Whether ``module`` is a layer of kind ``layers`` (whether or not it can be factorized)."""
    if isinstance(module, nn.Conv2d):
        return layers in ("conv", "all")
    if isinstance(module, nn.Linear):
        return layers in ("linear", "all")
    return False


def layer_scheme(layer: nn.Module, scheme: str | Scheme) -> Scheme:
    """The scheme a layer is factorized by: ``scheme`` for convs, channel for Linears."""
    return get_scheme("channel") if isinstance(layer, nn.Linear) else get_scheme(scheme)


_SOURCES: dict[type, str] = {}


def _forward_sources(cls: type) -> str:
    """Source of ``cls``'s forward methods (``forward``, ``forward_*``, ``_forward*``)."""
    if cls in _SOURCES:
        return _SOURCES[cls]
    parts = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        for attr, fn in vars(klass).items():
            if callable(fn) and (attr == "forward" or attr.startswith(("forward_", "_forward"))):
                try:
                    parts.append(inspect.getsource(fn))
                except (OSError, TypeError):
                    continue
    _SOURCES[cls] = "\n".join(parts)
    return _SOURCES[cls]


def _call_switch(model: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """The parent of ``name`` and its flag that makes it call ``<name>(x)``, if it has one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    flag = _CALL_SWITCHES.get(child)
    if flag is not None and isinstance(getattr(parent, flag, None), bool):
        return parent, flag
    return None


def route_through_layer(model: nn.Module, name: str) -> None:
    """Make the parent of the Linear at ``name`` call it rather than read its weight.

    timm's EVA, BEiT and Swin V2 attention run ``F.linear(x, self.qkv.weight, qkv_bias)``
    unless ``qkv_bias_separate`` is set, in which case they call ``self.qkv(x)`` and add
    the bias after: the same function, through the (factorized) layer.
    """
    switch = _call_switch(model, name)
    if switch is not None:
        setattr(switch[0], switch[1], True)


def _weight_reader(model: nn.Module, name: str) -> str | None:
    """The module above ``name`` whose forward reads ``<name>.weight`` itself, if any.

    Such code (e.g. ``F.linear(x, self.qkv.weight, bias)`` in timm's EVA/BEiT attention,
    or ``nn.MultiheadAttention`` and its ``out_proj``) would bypass a factorized layer.
    Reading only ``.weight.device``/``dtype``/``shape`` is harmless, and so is code that
    ``route_through_layer`` can switch off.
    """
    parts = name.split(".")
    # a direct parent that can be switched does not count; look further up only
    start = len(parts) - (2 if _call_switch(model, name) is not None else 1)
    for i in range(start, -1, -1):
        prefix, rel = ".".join(parts[:i]), ".".join(parts[i:])
        parent = model.get_submodule(prefix) if prefix else model
        pattern = rf"self\.{re.escape(rel)}\.weight\b(?!\s*\.\s*(?:device|dtype|shape|size|ndim))"
        if re.search(pattern, _forward_sources(type(parent))):
            return f"{type(parent).__name__}.forward" + (f" ({prefix})" if prefix else "")
    return None


def linear_unsupported_reason(linear: nn.Module, model: nn.Module, name: str) -> str | None:
    """Why the Linear at ``name`` in ``model`` cannot be factorized (None when it can)."""
    if not isinstance(linear, nn.Linear):
        return "not an nn.Linear"
    if type(linear) not in _KNOWN and type(linear).forward is not nn.Linear.forward:
        return f"{type(linear).__name__} overrides forward in a way this library does not model"
    if getattr(linear, "parametrizations", None):
        return "its weight is parametrized (torch.nn.utils.parametrize)"
    reader = _weight_reader(model, name)
    if reader is not None:
        return f"{reader} reads its weight directly, which would bypass the factorized layer"
    return None


def unsupported_reason(layer: nn.Module, model: nn.Module, name: str) -> str | None:
    """Why the conv or Linear at ``name`` in ``model`` cannot be factorized (None if it can)."""
    if isinstance(layer, nn.Linear):
        return linear_unsupported_reason(layer, model, name)
    return conv_unsupported_reason(layer)


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight a conv or Linear applies in ``forward`` (detached)."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    assert isinstance(layer, nn.Conv2d), type(layer)
    return conv_effective_weight(layer)
