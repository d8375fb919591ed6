"""Checkpoint files: a timm-compatible Hugging Face model repo in a directory.

A checkpoint holds ``config.json`` (timm's format: ``architecture`` is the factorized
entrypoint, ``model_args`` the base architecture, scheme and rank plan, ``pretrained_cfg``
the input size and normalization), ``model.safetensors``, ``results.json`` (measured
numbers and provenance) and ``README.md`` (the model card).

``model.safetensors`` carries a SHA-256 of its tensor data in its header metadata, so a
damaged file is caught at load time even where the header still parses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_directory, write_json

ARCHITECTURE = "trp_factorized"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RESULTS_NAME = "results.json"
CARD_NAME = "README.md"
DIGEST_KEY = "trp_zoo.sha256"

# pretrained_cfg keys that describe input preprocessing (timm's data_config)
_DATA_KEYS = {
    "input_size",
    "interpolation",
    "mean",
    "std",
    "crop_pct",
    "crop_mode",
    "test_input_size",
    "test_crop_pct",
}
# keys a checkpoint's pretrained_cfg must not take over from its base: they describe the
# base's own weights (where they are, their tag, license and paper)
_SOURCE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}
_BASE_PROVENANCE = ("tag", "license", "origin_url", "paper_name", "paper_ids", "notes")


# ----------------------------------------------------------------------------- weights


def _data_digest(blob: bytes | memoryview) -> str:
    header_len = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header_len :]).hexdigest()


def write_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``state_dict`` with safetensors, recording a SHA-256 of the tensor data."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt"}
    digest = _data_digest(safetensors.torch.save(tensors, metadata=meta))
    blob = safetensors.torch.save(tensors, metadata={**meta, DIGEST_KEY: digest})
    Path(path).write_bytes(blob)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is corrupt ({what}). Download it again (trp_zoo.load(..., force_download=True) "
        "or `hf cache delete`), or save the checkpoint again with trp_zoo.save_pretrained."
    )


def verify_weights(path: str | os.PathLike[str]) -> None:
    """Check that a safetensors file parses and that its data matches its recorded SHA-256.

    Files without a recorded digest (written by other tools) are only parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a checkpoint needs {WEIGHTS_NAME} next to its {CONFIG_NAME} "
            "(save it with trp_zoo.save_pretrained)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise _corrupt(path, f"safetensors cannot read it: {err}") from None
    expected = meta.get(DIGEST_KEY)
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + header_len)
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise _corrupt(
            path, "its tensor data does not match the SHA-256 recorded when it was saved"
        )


def weights_mismatch(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, skip: Sequence[str] = ()
) -> list[str]:
    """Differences between a state dict and what ``model`` expects (empty when they match).

    Keys starting with a prefix in ``skip`` are ignored (a head being replaced, say).
    """
    expected = model.state_dict()

    def skipped(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in skip)

    out = []
    for key, tensor in expected.items():
        if skipped(key):
            continue
        if key not in state_dict:
            out.append(f"{key} is missing from the weights")
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            out.append(
                f"{key} has shape {tuple(state_dict[key].shape)} in the weights but "
                f"{tuple(tensor.shape)} in the architecture"
            )
    out += [
        f"{k} is in the weights but not in the architecture"
        for k in state_dict
        if k not in expected and not skipped(k)
    ]
    return out


# ----------------------------------------------------------------------------- config


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, with a clear error when it is damaged."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}): the file is damaged; download or save it again"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return obj


def read_config(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = Path(checkpoint_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{Path(checkpoint_dir)} has no {CONFIG_NAME}, so it is not a checkpoint directory "
            "(write one with trp_zoo.save_pretrained)"
        )
    config = read_json(path)
    for key in ("architecture", "pretrained_cfg"):
        if key not in config:
            raise CheckpointError(f"{path} lacks {key!r}: it is not a timm model config")
    return config


def read_results(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``results.json`` of a checkpoint directory, or None when it has none."""
    path = Path(checkpoint_dir) / RESULTS_NAME
    return read_json(path) if path.is_file() else None


def _pretrained_cfg_fields() -> set[str]:
    from timm.models import PretrainedCfg

    return {f.name for f in fields(PretrainedCfg)}


def check_pretrained_cfg(overrides: Mapping[str, Any]) -> None:
    """Reject keys timm's ``PretrainedCfg`` does not have or that name a weight source."""
    allowed = _pretrained_cfg_fields() - _SOURCE_KEYS - {"architecture", "custom_load"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        from .modules import close_matches

        hint = close_matches(bad[0], allowed)
        raise ValueError(
            f"pretrained_cfg cannot set {', '.join(map(repr, bad))}.{hint} It takes timm "
            "PretrainedCfg fields such as input_size, mean, std, crop_pct, interpolation."
        )


def write_config(
    model: nn.Module,
    path: Path,
    *,
    model_args: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any],
    label_names: Sequence[str] | None,
    license: str,
) -> dict[str, Any]:
    """Write ``config.json`` with timm's own writer, then drop what described the base's weights.

    ``pretrained_cfg`` overrides go through timm's data config (input size, mean/std, crop)
    or straight into the saved ``pretrained_cfg`` (other fields).
    """
    from timm.models._hub import save_config_for_hf

    from .card import TRP_ARXIV, TRP_PAPER

    check_pretrained_cfg(pretrained_cfg)
    data_config = {k: v for k, v in pretrained_cfg.items() if k in _DATA_KEYS}
    other = {k: v for k, v in pretrained_cfg.items() if k not in _DATA_KEYS}
    model_config: dict[str, Any] = {"pretrained_cfg": {**other, "architecture": ARCHITECTURE}}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    if not hasattr(model, "pretrained_cfg"):
        raise ValueError(
            "save_pretrained needs a timm model (created by timm.create_model, then decomposed): "
            "this one has no pretrained_cfg"
        )
    save_config_for_hf(
        model,
        str(path),
        model_config=model_config,
        model_args=dict(model_args),
        data_config=data_config or None,
    )
    config = read_json(path)
    cfg = config["pretrained_cfg"]
    for key in _BASE_PROVENANCE:
        if key not in pretrained_cfg:
            cfg.pop(key, None)
    cfg.setdefault("license", license)
    cfg.setdefault("paper_name", TRP_PAPER)
    cfg.setdefault("paper_ids", TRP_ARXIV)
    write_json(path, config)
    return config


# ----------------------------------------------------------------------------- save


def _base_architecture(model: nn.Module, explicit: str | None) -> str:
    import timm

    from .modules import close_matches

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
    """Write a factorized timm model as a timm-compatible Hugging Face model repo directory.

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
    from .card import build_card
    from .decompose import factorized_scheme, rank_plan
    from .flops import count_flops, count_params
    from .modules import unwrap_model
    from .results import build_results, check_ratio, validate_metrics, validate_speedups
    from .store import check_store_name, register_local

    path = Path(path)
    m = unwrap_model(model)
    plan = rank_plan(m)
    scheme = factorized_scheme(m)
    if not plan or scheme is None:
        raise ValueError(
            "the model has no factorized layers: decompose it first (trp_zoo.decompose); a dense "
            "timm model is saved with timm's own save_for_hf"
        )
    base = _base_architecture(m, base_architecture)
    if register_as is not None:
        check_store_name(register_as)
    checked_metrics = validate_metrics(metrics)
    checked_speedups = validate_speedups(speedups)
    prov = dict(provenance or {})
    _check_destination(path)
    name = name or register_as or path.resolve().name
    if repo_id is None and register_as is not None:
        from .registry import REGISTRY

        entry = REGISTRY.get(register_as)
        repo_id = entry.repo_id if entry is not None else None

    args = {**(model_args or {}), "base_architecture": base, "scheme": scheme, "rank_plan": plan}
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
        counted = {"macs": count_flops(m, input_size), "params": count_params(m)}
        for key, value in counted.items():
            given = checked_metrics.get(key)
            if given is not None and given != value:
                raise ValueError(
                    f"metrics[{key!r}] = {given} but the model has {value} "
                    f"({'at input ' + str(input_size) if key == 'macs' else 'counted'}); "
                    f"leave {key!r} out (save_pretrained counts it) or count at the saved "
                    "input size"
                )
            checked_metrics[key] = value
        check_ratio(checked_metrics, "macs_reduction", "dense_macs", "macs")
        check_ratio(checked_metrics, "params_reduction", "dense_params", "params")
        results = build_results(
            name=name,
            repo_id=repo_id,
            architecture={
                "base_architecture": base,
                "scheme": scheme,
                "factorized_layers": len(plan),
                "input_size": list(input_size),
            },
            metrics=checked_metrics,
            speedups=checked_speedups,
            provenance=prov,
            input_size=input_size,
        )
        write_json(tmp / RESULTS_NAME, results)
        card = build_card(results, config, repo_id=repo_id, license=license, tags=tags)
        card.save(tmp / CARD_NAME)
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

    from .card import build_card
    from .results import merge_speedups, validate_speedups

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
    import timm

    rebuilt = timm.create_model(f"local-dir:{checkpoint_dir}", pretrained=False)
    problems = weights_mismatch(model.state_dict(), rebuilt)
    if problems:
        raise ValueError(
            "the model cannot be rebuilt from its config (was it changed after "
            "timm.create_model in a way timm's model_args do not record?): "
            + "; ".join(problems[:5])
        )
