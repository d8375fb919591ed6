"""Checks of everything a run writes to, made before the first training step.

A run that would fail at its end (an invalid ``--model-name``, a store or output path
that is a file, a ``--publish-mirror`` with no repo to name) is refused in seconds instead
of after hours of training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ZooError
from ..fileio import writable_dir_problem
from ..paths import zoo_home
from ..zoo.publish import check_repo_id
from ..zoo.registry import REGISTRY, get_entry
from ..zoo.store import check_store_name, store_dir
from .config import TrainConfig
from .data import DataBundle
from .finalize import TRAIN_RESULTS

_REGISTRY_DATASETS = {"fashion_mnist": "fashion-mnist", "imagenet": "imagenet-1k"}


def _registry_mismatch(cfg: TrainConfig) -> str | None:
    """A ``--model-name`` of the zoo registry names one model: refuse to register another
    (``trp_zoo.load(name)`` would return it)."""
    entry = REGISTRY.get(cfg.model_name or "")
    if entry is None:
        return None
    run = (cfg.model, cfg.scheme, _REGISTRY_DATASETS.get(cfg.dataset, cfg.dataset))
    if run == (entry.base_architecture, entry.scheme, entry.dataset):
        return None
    return (
        f"--model-name {entry.name} is the zoo's {entry.base_architecture} ({entry.scheme} "
        f"scheme, {entry.dataset}), not this run's {run[0]} ({run[1]}, {run[2]}): choose "
        "another name, or --model-name none"
    )


def preflight(cfg: TrainConfig, *, main_process: bool = True) -> None:
    """Raise ``ValueError`` naming every problem that would make this run fail later.

    Creates the output directory (and, when the run registers a model, the local store)
    on the main process, so a path that cannot be written is found now.
    """
    problems: list[str] = []
    out = Path(cfg.output_dir)
    if main_process and (problem := writable_dir_problem(out, "--output-dir")):
        problems.append(problem)
    for sub in ("model", "checkpoints", "plots"):
        path = out / sub
        if path.exists() and not path.is_dir():
            problems.append(f"{path} is a file; the run writes a directory there: move the file")
    for name in (TRAIN_RESULTS, "metrics.jsonl"):
        if (out / name).is_dir():
            problems.append(f"{out / name} is a directory; the run writes a file there: move it")
    if cfg.model_name is not None:
        try:
            check_store_name(cfg.model_name)
        except ValueError as err:
            problems.append(f"--model-name: {err}, or --model-name none to skip registering")
        else:
            if problem := _registry_mismatch(cfg):
                problems.append(problem)
            try:
                zoo_home()
            except ZooError as err:
                problems.append(f"{err}, or --model-name none to skip registering")
            else:
                store = store_dir()
                if main_process and (problem := writable_dir_problem(store, "the local store")):
                    problems.append(f"{problem} (set TRP_ZOO_HOME, or --model-name none)")
    if cfg.push_to_hub:
        try:
            check_repo_id(cfg.push_to_hub)
        except ZooError as err:
            problems.append(f"--push-to-hub: {err}")
    if cfg.publish_mirror:
        mirror = Path(cfg.publish_mirror)
        if mirror.exists() and not mirror.is_dir():
            problems.append(f"--publish-mirror {mirror} is a file; give the mirror directory")
        if not cfg.push_to_hub:
            if cfg.model_name is None:
                problems.append(
                    "--publish-mirror needs --push-to-hub ORG/NAME or a --model-name from the "
                    "zoo registry to name the repo"
                )
            else:
                try:
                    get_entry(cfg.model_name)
                except ZooError as err:
                    problems.append(
                        f"--publish-mirror: {err} Give --push-to-hub ORG/NAME to name the repo"
                    )
    if problems:
        raise ValueError("; ".join(problems))


def check_data(data: DataBundle, cfg: TrainConfig) -> None:
    """Refuse settings the loaded data set is too small for (ValueError naming the flag)."""
    available = len(data.train)  # type: ignore[arg-type]
    if cfg.target_sensitivity_images > available:
        raise ValueError(
            f"--target-sensitivity-images {cfg.target_sensitivity_images} is more than the "
            f"{available} images of the training split: use at most {available}"
        )


@torch.no_grad()
def check_model(model: nn.Module, data: DataBundle, cfg: TrainConfig) -> None:
    """Run ``model`` once on two images of the data set's size (ValueError naming the flag).

    A ``--model-kwargs`` value of the wrong type, or a model built for another input size
    or number of classes, otherwise fails inside the first training step, or at the first
    label past the classifier's size.
    """
    kwargs = f" with --model-kwargs {cfg.model_kwargs}" if cfg.model_kwargs else ""
    size = "x".join(map(str, data.input_size))
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *data.input_size))
    except Exception as err:  # anything the model's own code raises
        text = str(err).strip().splitlines()
        why = text[0][:200] if text else type(err).__name__
        raise ValueError(
            f"--model {cfg.model}{kwargs} cannot run on the data set's {size} images ({why}): "
            "check --model and --model-kwargs"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"--model {cfg.model}{kwargs} gives outputs of shape {shape} for a batch of 2, but "
            f"the data set has {data.num_classes} classes: drop num_classes from --model-kwargs "
            "(the data set sets it)"
        )
