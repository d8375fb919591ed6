"""Where models come from: zoo names, hub repo ids and checkpoint directories."""

from __future__ import annotations

from typing import Any

from torch import nn


def load_source(source: str) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained model and its ``trp_zoo.model_info`` for a zoo name, repo id or directory."""
    import trp_zoo

    load = getattr(trp_zoo, "load", None)
    model_info = getattr(trp_zoo, "model_info", None)
    if load is None or model_info is None:
        raise RuntimeError(
            "this trp_zoo has no load()/model_info(); install a trp-zoo with the model zoo, "
            "or use runtime.pipeline.build_and_check(model, ...) with a model in memory"
        )
    info = dict(model_info(source))
    model = load(source, pretrained=True)
    return model, info
