"""Where models come from: zoo names, hub repo ids and checkpoint directories."""

from __future__ import annotations

from typing import Any

from torch import nn

import trp_zoo


def load_source(source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained model and its ``trp_zoo.model_info`` for a zoo name, repo id or directory."""
    info = dict(trp_zoo.model_info(source))
    return trp_zoo.load(source, pretrained=True), info
