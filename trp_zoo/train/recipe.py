"""``run_recipe``: what every script in ``recipes/`` runs, with its own defaults."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from ..errors import ZooError
from ..models.dense import create_dense_model, load_dense_weights
from .config import TrainConfig, build_parser, config_from_args
from .data import DataBundle, build_data
from .distributed import DistInfo, cleanup, init_distributed
from .finalize import finalize
from .preflight import check_data, check_model, preflight
from .trainer import TargetPlanner, Trainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def create_model(cfg: TrainConfig, data: DataBundle) -> nn.Module:
    """The timm model for ``data``, with dense starting weights from ``--pretrained`` if given."""
    return _timm_model(cfg, data, cfg.pretrained, "--pretrained")


def create_teacher(cfg: TrainConfig, data: DataBundle) -> nn.Module | None:
    """The dense teacher of ``--distill-from`` (the same architecture), or None."""
    if not cfg.distill_from:
        return None
    return _timm_model(cfg, data, cfg.distill_from, "--distill-from")


def _timm_model(cfg: TrainConfig, data: DataBundle, source: str | None, flag: str) -> nn.Module:
    kwargs = {"num_classes": data.num_classes, "in_chans": data.input_size[0], **cfg.model_kwargs}
    try:
        if source and source.startswith("hf-hub:"):
            return timm.create_model(source, pretrained=True, **kwargs)
        model = create_dense_model(cfg.model, **kwargs)
        if source:
            load_dense_weights(model, source, flag, cfg.model)
    except (ZooError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # the hub's errors: offline, unknown repo, no such file
        if not source:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(
            f"error: {flag} {source}: could not be fetched ({first}); pass {flag} with a local "
            "weights file, or run where the Hugging Face hub is reachable"
        ) from None
    return model


def run_recipe(
    defaults: TrainConfig,
    recipe: str,
    argv: Sequence[str] | None = None,
    description: str | None = None,
    target_planner: TargetPlanner | None = None,
) -> dict[str, Any]:
    """Parse the command line over ``defaults``, train, decompose and report.

    ``target_planner`` chooses the ``--target-latency`` plan (the recipes pass the
    runtime's ``runtime.train_target.plan_for_target``; without it that option is refused).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser(defaults, description)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(defaults, args)
    except ValueError as err:
        parser.error(str(err))
    if cfg.target_latency is not None and target_planner is None:
        parser.error(
            "--target-latency needs the runtime's deployment planner: run it through a recipe "
            "script in recipes/, or pass target_planner=runtime.train_target.plan_for_target"
        )
    try:
        info: DistInfo = init_distributed(cfg.device)
    except RuntimeError as err:  # no GPU for --device cuda; a process group that cannot form
        raise SystemExit(f"error: {err}") from None
    try:
        try:
            preflight(cfg, main_process=info.is_main)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        seed_everything(cfg.seed)
        try:
            data = build_data(cfg.dataset, cfg.data_dir, cfg.model, download=cfg.download)
            check_data(data, cfg)
        except ValueError as err:  # DataError included
            raise SystemExit(f"error: {err}") from None
        model = create_model(cfg, data)
        try:
            check_model(model, data, cfg)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        teacher = create_teacher(cfg, data)
        try:
            trainer = Trainer(cfg, model, data, info, target_planner, teacher)
        except ValueError as err:  # settings that cannot work with this model or data
            raise SystemExit(f"error: {err}") from None
        try:
            trainer.fit()
        except (FileExistsError, ZooError) as err:
            raise SystemExit(f"error: {err}") from None
        return finalize(trainer, recipe)
    except KeyboardInterrupt:
        print(
            f"interrupted: rerun the same command with --resume to continue from the last "
            f"checkpoint in {Path(cfg.output_dir) / 'checkpoints'}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    finally:
        cleanup(info)


def main(
    defaults: TrainConfig,
    recipe: str,
    description: str | None = None,
    target_planner: TargetPlanner | None = None,
) -> None:
    """Entry point for a recipe script."""
    run_recipe(defaults, recipe, sys.argv[1:], description, target_planner)
