"""Dense starting models: a timm architecture by name, with weights from a file or the hub.

One place for what the recipes' ``--pretrained`` and the planner's ``--model/--weights``
both do, with errors that name the flag and the fix.
"""

from __future__ import annotations

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
    """Load a state-dict file (``.pth``/``.safetensors``) into ``model``, strictly."""
    try:
        timm.models.load_checkpoint(model, source, strict=True)
    except (FileNotFoundError, IsADirectoryError, RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"{flag} {source}: {err}. Give a state-dict file (.pth/.safetensors) of a "
            f"{architecture} with the same input channels and number of classes"
        ) from None
