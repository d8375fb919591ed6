"""``save_pretrained`` and ``record_speedups``: write and update checkpoint directories.

The file format itself (names, reading, verifying) lives in ``trp_zoo.zoo.model_repo``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from torch import nn

from ..algorithms.decompose import factorized_scheme, rank_plan
from ..errors import CheckpointError, ZooError
from ..fileio import atomic_directory, write_error, write_json
from ..lowrank.factorized import FactorizedLinear
from ..lowrank.macs import count_flops, count_params
from ..modules import close_matches, unwrap_model
from .card import build_card
from .model_repo import (
    ARCHITECTURE,
    CARD_NAME,
    CONFIG_NAME,
    RESULTS_NAME,
    WEIGHTS_NAME,
    read_config,
    read_results,
    weights_mismatch,
    write_config,
    write_weights,
)
from .registry import REGISTRY
from .results import (
    build_results,
    check_ratio,
    merge_speedups,
    validate_metrics,
    validate_speedups,
)
from .store import check_store_name, register_local


def _base_architecture(model: nn.Module, explicit: str | None) -> str:

    if explicit is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture")
        if arch == ARCHITECTURE:
            args = {
                **getattr(model, "pretrained_model_args", {}),
                **getattr(model, "_model_args", {}),
            }
            arch = args.get("base_architecture")
        if not arch:
            raise ValueError(
                "cannot tell the model's timm architecture: pass base_architecture='resnet18' "
                "(the timm model name it was created from)"
            )
        explicit = str(arch)
    if not timm.is_model(explicit):
        raise ValueError(
            f"base architecture {explicit!r} is not a timm model name."
            f"{close_matches(explicit, timm.list_models())} Register it with timm's "
            "register_model (and import that module) before saving."
        )
    return explicit


def _check_destination(path: Path) -> None:
    if path.is_file():
        raise ValueError(f"{path} is a file; save_pretrained writes a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise ValueError(
            f"{path} exists and is not a checkpoint directory; save_pretrained only replaces "
            "checkpoints. Choose a new or empty directory."
        )


def _factorization(model: nn.Module) -> tuple[dict[str, int], str]:
    """The rank plan and scheme of a factorized model; a dense one is refused."""
    plan, scheme = rank_plan(model), factorized_scheme(model)
    if not plan or scheme is None:
        raise ValueError(
            "the model has no factorized layers: decompose it first (trp_zoo.decompose); a dense "
            "timm model is saved with timm's own save_for_hf"
        )
    return plan, scheme


def _with_counts(
    model: nn.Module, input_size: tuple[int, ...], metrics: dict[str, Any]
) -> dict[str, Any]:
    """``metrics`` with the model's MACs (at ``input_size``) and parameters, counted here;
    given values must agree with the count, and given reductions with their ratios."""
    counted = {"macs": count_flops(model, input_size), "params": count_params(model)}
    for key, value in counted.items():
        given = metrics.get(key)
        if given is not None and given != value:
            raise ValueError(
                f"metrics[{key!r}] = {given} but the model has {value} "
                f"({'at input ' + str(input_size) if key == 'macs' else 'counted'}); "
                f"leave {key!r} out (save_pretrained counts it) or count at the saved "
                "input size"
            )
        metrics[key] = value
    check_ratio(metrics, "macs_reduction", "dense_macs", "macs")
    check_ratio(metrics, "params_reduction", "dense_params", "params")
    return metrics


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    speedups: Sequence[Mapping[str, Any]] = (),
    register_as: str | None = None,
    name: str | None = None,
    repo_id: str | None = None,
    label_names: Sequence[str] | None = None,
    base_architecture: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> Path:
    """Write a factorized timm model (convs and/or Linears) as a timm-compatible Hugging Face
    model repo directory.

    Files: ``config.json`` (timm's format, ``architecture="trp_factorized"``, ``model_args``
    with ``base_architecture``, ``scheme``, ``rank_plan``, ``num_classes``, ``in_chans``),
    ``model.safetensors``, ``results.json`` and ``README.md`` (model card with a
    ``model-index``). The directory appears complete or not at all; an existing checkpoint
    at ``path`` is replaced only once the new one is fully written.

    Args:
        model: a timm model decomposed by ``trp_zoo.decompose`` (or loaded from the zoo).
        path: the checkpoint directory to write.
        metrics: numbers the caller measured: ``top1``, ``top5``, ``dense_top1``,
            ``dense_top5``, ``direct_decompose_top1`` (percent), ``dense_macs``,
            ``dense_params``, ``macs_reduction``, ``params_reduction``, ``dataset`` (e.g.
            ``"fashion-mnist"``), ``split`` (e.g. ``"test"``); other JSON values are kept in
            ``results.json``. ``macs`` and ``params`` are counted here on ``model`` (at the
            saved input size); given values must agree with the count.
        provenance: how the model was made: ``recipe``, ``command``, ``data``, ``date``,
            ``epochs`` and any hyper-parameters (JSON values). Software versions and the
            save time are added.
        pretrained_cfg: timm ``PretrainedCfg`` fields to set, e.g. ``{"input_size": (1, 28,
            28), "mean": (0.2860,), "std": (0.3530,), "crop_pct": 1.0}``; the rest comes from
            the base model's config.
        speedups: measured speed-ups, each ``{"value": dense_time / factorized_time,
            "backend": ..., "device": ..., "batch_size": ..., "precision": ...}``.
        register_as: also record the checkpoint in the local store under this name, so
            ``trp_zoo.load(name)`` finds it offline on this machine.
        name: the model's name in the card (default: ``register_as`` or the directory name).
        repo_id: the hub repo the checkpoint is meant for (used in the card's usage lines;
            defaults to the registry entry's repo when ``register_as`` is a registry name).
        label_names: class names, in classifier order.
        base_architecture: the timm model name the model was built from (read from the
            model's ``pretrained_cfg`` when not given).
        model_args: extra timm.create_model kwargs to rebuild the base (JSON values).
        license, tags: model card metadata.

    Returns:
        ``path`` as a ``Path``.
    """

    path = Path(path)
    m = unwrap_model(model)
    plan, scheme = _factorization(m)
    base = _base_architecture(m, base_architecture)
    if register_as is not None:
        check_store_name(register_as)
    checked_metrics = validate_metrics(metrics)
    checked_speedups = validate_speedups(speedups)
    prov = dict(provenance or {})
    _check_destination(path)
    name = name or register_as or path.resolve().name
    if repo_id is None and register_as is not None:
        repo_id = getattr(REGISTRY.get(register_as), "repo_id", None)
    args = {**(model_args or {}), "base_architecture": base, "scheme": scheme, "rank_plan": plan}
    try:
        with atomic_directory(path) as tmp:
            config = write_config(
                m,
                tmp / CONFIG_NAME,
                model_args=args,
                pretrained_cfg=dict(pretrained_cfg or {}),
                label_names=label_names,
                license=license,
            )
            _check_rebuilds(tmp, m)
            write_weights(m.state_dict(), tmp / WEIGHTS_NAME)
            input_size = tuple(config["pretrained_cfg"]["input_size"])
            results = build_results(
                name=name,
                repo_id=repo_id,
                architecture={
                    "base_architecture": base,
                    "scheme": scheme,
                    "factorized_layers": len(plan),
                    "factorized_linear_layers": sum(
                        isinstance(m.get_submodule(n), FactorizedLinear) for n in plan
                    ),
                    "input_size": list(input_size),
                },
                metrics=_with_counts(m, input_size, checked_metrics),
                speedups=checked_speedups,
                provenance=prov,
                input_size=input_size,
            )
            write_json(tmp / RESULTS_NAME, results)
            card = build_card(results, config, repo_id=repo_id, license=license, tags=tags)
            card.save(tmp / CARD_NAME)
    except OSError as err:
        if isinstance(err, ZooError):
            raise
        raise write_error(path, err, "choose a writable directory with free space") from None
    if register_as is not None:
        register_local(path, register_as)
    return path


def record_speedups(
    checkpoint_dir: str | os.PathLike[str], speedups: Sequence[Mapping[str, Any]]
) -> Path:
    """Add measured speed-ups to a saved checkpoint's ``results.json`` and model card.

    Each entry is ``{"value": dense_time / factorized_time, "backend": ..., "device": ...}``
    plus optional ``batch_size``, ``precision``, ``latency_ms``, ``command``, ``date``; an
    entry replaces an earlier one with the same backend, device, batch size and precision.
    The weights are untouched; the directory is updated atomically.
    """
    from huggingface_hub import ModelCard

    path = Path(checkpoint_dir)
    config = read_config(path)
    results = read_results(path)
    if results is None:
        raise CheckpointError(
            f"{path} has no {RESULTS_NAME}; save the checkpoint with trp_zoo.save_pretrained"
        )
    results["speedups"] = merge_speedups(results.get("speedups", []), validate_speedups(speedups))
    old = ModelCard.load(path / CARD_NAME).data if (path / CARD_NAME).is_file() else None
    card = build_card(
        results,
        config,
        repo_id=results.get("repo_id"),
        license=(old.license if old is not None else None) or "apache-2.0",
        tags=(old.tags if old is not None else None) or (),
    )
    with atomic_directory(path) as tmp:
        for item in path.iterdir():
            if item.name in (RESULTS_NAME, CARD_NAME) or not item.is_file():
                continue
            try:
                os.link(item, tmp / item.name)  # unchanged files: no copy of the weights
            except OSError:
                shutil.copy2(item, tmp / item.name)
        write_json(tmp / RESULTS_NAME, results)
        card.save(tmp / CARD_NAME)
    return path


def _check_rebuilds(checkpoint_dir: Path, model: nn.Module) -> None:
    """Build the architecture from the written config.json as timm will, and compare."""

    rebuilt = timm.create_model(f"local-dir:{checkpoint_dir}", pretrained=False)
    problems = weights_mismatch(model.state_dict(), rebuilt)
    if problems:
        raise ValueError(
            "the model cannot be rebuilt from its config (was it changed after "
            "timm.create_model in a way timm's model_args do not record?): "
            + "; ".join(problems[:5])
        )
