"""``run_recipe``: what every script in ``recipes/`` runs, with its own defaults."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from .checkpoint import CheckpointWriteError
from .config import TrainConfig, build_parser, config_from_args
from .data import DataBundle, DataError, build_data
from .distributed import DistInfo, cleanup, init_distributed
from .engine import Trainer
from .finalize import finalize
from .preflight import preflight


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def create_model(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    """The timm model for ``data``, with dense starting weights from ``--pretrained`` if given."""
    import trp_zoo.models  # noqa: F401  (registers the CIFAR ResNets)

    kwargs = {"num_classes": data.num_classes, "in_chans": data.input_size[0], **cfg.model_kwargs}
    source = cfg.pretrained
    try:
        if source and source.startswith("hf-hub:"):
            return timm.create_model(source, pretrained=True, **kwargs)
        model = timm.create_model(cfg.model, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise SystemExit(f"error: could not create {source or cfg.model}: {err}") from None
    if source:
        try:
            timm.models.load_checkpoint(model, source, strict=True)
        except (FileNotFoundError, RuntimeError, KeyError) as err:
            raise SystemExit(
                f"error: --pretrained {source}: {err}. Give a state-dict file (.pth/.safetensors) "
                f"of a {cfg.model} with the same number of classes, or an hf-hub:ORG/NAME id."
            ) from None
    return model


def run_recipe(
    defaults: TrainConfig,
    recipe: str,
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Parse the command line over ``defaults``, train, decompose and report."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(defaults, description)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(defaults, args)
    except ValueError as err:
        parser.error(str(err))
    info: DistInfo = init_distributed(cfg.device)
    try:
        try:
            preflight(cfg, main_process=info.is_main)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        seed_everything(cfg.seed)
        try:
            data = build_data(cfg.dataset, cfg.data_dir, cfg.model, download=cfg.download)
        except DataError as err:
            raise SystemExit(f"error: {err}") from None
        model = create_model(cfg, data)
        try:
            trainer = Trainer(cfg, model, data, info)
        except ValueError as err:  # settings that cannot work with this model or data
            raise SystemExit(f"error: {err}") from None
        try:
            trainer.fit()
        except (FileExistsError, CheckpointWriteError) as err:
            raise SystemExit(f"error: {err}") from None
        return finalize(trainer, recipe)
    finally:
        cleanup(info)


def main(defaults: TrainConfig, recipe: str, description: str | None = None) -> None:
    """Entry point for a recipe script."""
    run_recipe(defaults, recipe, sys.argv[1:], description)
