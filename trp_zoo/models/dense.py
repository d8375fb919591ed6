"""Dense starting models: a timm architecture by name, with weights from a file or the hub.

One place for what the recipes' ``--pretrained`` and the planner's ``--model/--weights``
both do, with errors that name the flag and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from torch import nn

from ..errors import CheckpointError, UnknownModelError
from ..modules import close_matches


def create_dense_model(architecture: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(architecture, pretrained=False, **kwargs)``; an unknown name is
    refused with the closest timm names."""
    from .. import models  # noqa: F401  (registers the CIFAR ResNets with timm)

    if not timm.is_model(architecture):
        raise UnknownModelError(
            f"unknown model {architecture!r}: not a timm architecture."
            f"{close_matches(architecture, timm.list_models())} Pass a timm name such as resnet50"
        )
    try:
        return timm.create_model(architecture, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UnknownModelError(f"could not create {architecture} with {kwargs}: {err}") from None


def load_dense_weights(model: nn.Module, source: str, flag: str, architecture: str) -> None:
    """Load a state-dict file (``.pth``/``.safetensors``) into ``model``, strictly; every
    problem is one line naming ``flag``."""
    fix = (
        f"Give a state-dict file (.pth/.safetensors) of a {architecture} with the same input "
        "channels and number of classes"
    )
    if not Path(source).is_file():
        raise CheckpointError(f"{flag} {source} is not a file. {fix}")
    try:
        state = timm.models.load_state_dict(source)
    except Exception as err:  # torch.load and safetensors raise many types on a damaged file
        raise CheckpointError(
            f"{flag} {source} is not a readable state-dict file ({_load_failure(err)}). {fix}"
        ) from None
    if mismatch := state_dict_mismatch(model.state_dict(), state):
        raise CheckpointError(f"{flag} {source} does not fit a {architecture}: {mismatch}. {fix}")
    model.load_state_dict(state, strict=True)


def state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """One line saying how ``given`` differs from ``expected`` (keys and shapes), or None."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {list(given[k].shape)} where the model has {list(v.shape)}"
        for k, v in expected.items()
        if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing ({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights ({some(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of other shapes ({some(shapes)})")
    return "; ".join(parts) or None


def _load_failure(err: Exception) -> str:
    """The first sentence of a load error; torch's weights_only advice (load unsafely) is
    wrong for a file that is not a state dict, so it is replaced."""
    text = str(err).strip()
    if "weights_only" in text:
        return "not a tensor state dict: a damaged file or a pickle of other objects"
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    return first[:200]
